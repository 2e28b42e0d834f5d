//! A global allocator that counts the allocations (and reallocations) made
//! where a test says they matter, for tests that prove a path allocates
//! nothing. A test binary installs it with
//! `#[global_allocator] static ALLOC: Counting = Counting::new(counted_here);`
//! where `counted_here` tells, on the allocating thread, whether to count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counting {
    counted_here: fn() -> bool,
    count: AtomicU64,
}

impl Counting {
    pub const fn new(counted_here: fn() -> bool) -> Self {
        Counting {
            counted_here,
            count: AtomicU64::new(0),
        }
    }

    /// The allocations counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn note(&self) {
        if (self.counted_here)() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}
