//! The arenas: the newest freed slots stay warm, older ones are discarded
//! together and keep their guards.

use super::{alloc, free, guard_region, page_size, warm_len, DISCARD_BATCH, WARM_SLOTS};

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
    // Released at once (warm ones included): every slot reads as zeroes
    // again, and every guard page still refuses access.
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

#[test]
fn the_newest_freed_slots_stay_warm_and_are_reused_first() {
    // A size of its own, so no other test shares the class.
    let size = 40 * page_size();
    let stacks: Vec<*mut u8> = (0..WARM_SLOTS + DISCARD_BATCH)
        .map(|_| alloc(size).unwrap())
        .collect();
    for (i, &bottom) in stacks.iter().enumerate() {
        // SAFETY: a fresh stack of `size` bytes, ours alone; its top byte.
        unsafe { bottom.add(size - 1).write(i as u8) };
    }
    for &bottom in &stacks {
        // SAFETY: nothing uses the stacks any more.
        unsafe { free(bottom, size) };
    }
    // The oldest batch was discarded once the warm list overflowed.
    assert_eq!(warm_len(size), WARM_SLOTS);
    // The newest freed comes back first, on its own page.
    let last = stacks.len() - 1;
    let again = alloc(size).unwrap();
    assert_eq!(again, stacks[last]);
    // SAFETY: ours again; a warm slot keeps what was written.
    assert_eq!(unsafe { again.add(size - 1).read() }, last as u8);
    assert_eq!(warm_len(size), WARM_SLOTS - 1);
    // SAFETY: nothing uses it any more.
    unsafe { free(again, size) };
    // Released: nothing stays warm.
    super::release_freed();
    assert_eq!(warm_len(size), 0);
}
