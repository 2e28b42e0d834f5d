//! polytun — the command line of the polytun VPN daemon.

use clap::{Parser, Subcommand};
use polytun_daemon::config::{default_control_socket, CONTROL_DIR};
use polytun_daemon::control::{self, Command, Reply};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "polytun",
    version,
    about = "Control and inspect polytund tunnels"
)]
struct Cli {
    /// Interface whose daemon to talk to (its control socket is /run/polytun/IFACE.sock).
    #[arg(short, long, global = true)]
    interface: Option<String>,
    /// Control socket path (overrides --interface).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show interfaces, tunnels, peers and counters (like `wg show`).
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Start a new handshake now (key update), with one peer or all. IPsec:
    /// rekeys the CHILD SAs (CREATE_CHILD_SA), or with --ike the IKE SAs,
    /// or with --reauth reauthenticates (like `swanctl --rekey`).
    Rekey {
        /// Peer name or public key.
        peer: Option<String>,
        #[arg(long)]
        tunnel: Option<String>,
        /// IPsec: rekey the CHILD SAs (the default).
        #[arg(long, conflicts_with_all = ["ike", "reauth"])]
        child: bool,
        /// IPsec: rekey the IKE SAs (their CHILD SAs move along).
        #[arg(long, conflicts_with = "reauth")]
        ike: bool,
        /// IPsec: reauthenticate (a new IKE SA with new CHILD SAs replaces the old one).
        #[arg(long)]
        reauth: bool,
    },
    /// Export a key derived from the tunnel's current key (IPsec: from the
    /// IKE SA's SK_d, see crates/ike); prints it in hex.
    ExportKey {
        #[arg(long)]
        tunnel: Option<String>,
        /// What the key is for (1-255 bytes); different labels give independent keys.
        #[arg(long)]
        label: String,
        /// Optional context bound into the key.
        #[arg(long, default_value = "")]
        context: String,
        /// Key length in bytes.
        #[arg(long, default_value_t = 32)]
        length: usize,
    },
    /// Stop the daemon, closing every tunnel.
    Down,
    /// Print the RFC 8922 §5 security interfaces each protocol supports.
    Capabilities,
    /// Generate a WireGuard private key (base64).
    Genkey,
    /// Read a private key on stdin, print its public key.
    Pubkey,
    /// Generate a preshared key (base64).
    Genpsk,
}

fn socket(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    if let Some(i) = &cli.interface {
        return Ok(default_control_socket(i));
    }
    let socks: Vec<PathBuf> = std::fs::read_dir(CONTROL_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match socks.len() {
        1 => Ok(socks[0].clone()),
        0 => Err(format!(
            "no polytund is running (no socket in {CONTROL_DIR})"
        )),
        _ => Err(format!(
            "several polytund are running; pick one with -i: {}",
            socks
                .iter()
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn request(cli: &Cli, cmd: Command) -> Result<Reply, String> {
    let path = socket(cli)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(control::request(&path, &cmd))
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), String> = match &cli.cmd {
        Cmd::Genkey => {
            let k = polytun_wireguard::keys::generate_secret(&mut rand_core::OsRng);
            println!("{}", polytun_wireguard::keys::encode_base64(&k.to_bytes()));
            Ok(())
        }
        Cmd::Genpsk => {
            let k = polytun_wireguard::keys::PresharedKey::generate(&mut rand_core::OsRng);
            println!("{}", polytun_wireguard::keys::encode_base64(&k.0));
            Ok(())
        }
        Cmd::Pubkey => {
            let mut s = zeroize::Zeroizing::new(String::new());
            match std::io::stdin().read_to_string(&mut s) {
                Err(e) => Err(e.to_string()),
                Ok(_) => match polytun_wireguard::keys::secret_from_base64(s.trim()) {
                    Ok(k) => {
                        let p = polytun_wireguard::keys::public_key(&k);
                        println!("{}", polytun_wireguard::keys::encode_base64(p.as_bytes()));
                        Ok(())
                    }
                    Err(e) => Err(format!("pubkey: {e}")),
                },
            }
        }
        Cmd::Capabilities => {
            let wg = polytun_wireguard::capabilities();
            let ipsec = polytun_daemon::ipsec::capabilities();
            let openvpn = polytun_openvpn::capabilities();
            print!(
                "{}",
                polytun_core::capabilities::render_table(&[
                    ("wireguard", &wg),
                    ("ipsec", &ipsec),
                    ("openvpn", &openvpn)
                ])
            );
            Ok(())
        }
        Cmd::Show { json } => match request(&cli, Command::Show) {
            Ok(Reply::Show(s)) => {
                if *json {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                } else {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    print!("{}", control::render_show(&s, now));
                }
                Ok(())
            }
            Ok(Reply::Error { message }) => Err(message),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e),
        },
        Cmd::ExportKey {
            tunnel,
            label,
            context,
            length,
        } => match request(
            &cli,
            Command::ExportKey {
                tunnel: tunnel.clone(),
                label: label.clone(),
                context: context.clone(),
                length: *length,
            },
        ) {
            Ok(Reply::Key {
                tunnel,
                source,
                key_hex,
            }) => {
                eprintln!("tunnel {tunnel}: {source}");
                println!("{key_hex}");
                Ok(())
            }
            Ok(Reply::Error { message }) => Err(message),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e),
        },
        Cmd::Rekey {
            peer,
            tunnel,
            child,
            ike,
            reauth,
        } => match request(
            &cli,
            Command::Rekey {
                tunnel: tunnel.clone(),
                peer: peer.clone(),
                ipsec: if *reauth {
                    Some(control::IpsecRekey::Reauth)
                } else if *ike {
                    Some(control::IpsecRekey::Ike)
                } else if *child {
                    Some(control::IpsecRekey::Child)
                } else {
                    None
                },
            },
        ) {
            Ok(Reply::Ok { message }) => {
                println!("{message}");
                Ok(())
            }
            Ok(Reply::Error { message }) => Err(message),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e),
        },
        Cmd::Down => match request(&cli, Command::Down) {
            Ok(Reply::Ok { message }) => {
                println!("{message}");
                Ok(())
            }
            Ok(Reply::Error { message }) => Err(message),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polytun: {e}");
            ExitCode::from(1)
        }
    }
}
