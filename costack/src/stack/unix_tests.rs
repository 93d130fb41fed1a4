//! The arenas: slots freed together are discarded together, and keep
//! their guards.

use super::{alloc, free, guard_region, page_size, DISCARD_BATCH};

#[test]
fn batched_discards_zero_the_slots_and_keep_the_guards() {
    // A size of its own, so no other test shares the class.
    let size = 48 * page_size();
    let stacks: Vec<*mut u8> = (0..DISCARD_BATCH).map(|_| alloc(size).unwrap()).collect();
    for &bottom in &stacks {
        // SAFETY: a fresh stack of `size` bytes, ours alone.
        unsafe {
            bottom.write_bytes(0xa5, size);
        }
    }
    for &bottom in &stacks {
        // SAFETY: nothing uses the stacks any more.
        unsafe { free(bottom, size) };
    }
    // The batch was discarded when it filled; released at once, every slot
    // reads as zeroes again, and every guard page still refuses access.
    super::release_freed();
    let again: Vec<*mut u8> = (0..DISCARD_BATCH).map(|_| alloc(size).unwrap()).collect();
    for &bottom in &again {
        assert!(stacks.contains(&bottom), "a freed slot was reused");
        // SAFETY: ours again, `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(bottom, size) };
        assert!(bytes.iter().all(|&b| b == 0), "a discarded stack kept data");
        assert!(
            guard_region::guard_holds(bottom.wrapping_sub(page_size())),
            "a guard page was lost by the discard"
        );
    }
    for bottom in again {
        // SAFETY: as above.
        unsafe { free(bottom, size) };
    }
}
