//! How the vendored sled splits its leaves (patches 7 and 10, `vendor/sled-0.34.7/PATCHES.md`): a
//! leaf splits past 32 entries (past 16 once it holds more than 64 KiB), where the key being
//! inserted goes when that is in its upper half, so appends (each channel's event ids ascend)
//! leave full leaves behind, and keys in random order still split about evenly; every key is
//! found, in order, before and after a reopen. The appends' bounds fail with sled's own split in
//! the middle, the small keys' with its 16-entry leaves, the large events' with 32-entry ones.

use std::path::Path;

/// Leaves in sled's tree, counted from its `Debug` form (which prints every node, level by level).
fn leaves(tree: &sled::Tree) -> usize {
    format!("{tree:?}").matches("Leaf(Leaf").count()
}

/// 24-byte keys like the event log's: a channel number, then an ascending sequence.
fn key(channel: u64, sequence: u64) -> [u8; 24] {
    let mut key = [0_u8; 24];
    key[..8].copy_from_slice(&channel.to_be_bytes());
    key[8..16].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn insert_all(tree: &sled::Tree, keys: &[[u8; 24]]) {
    for key in keys {
        tree.insert(key, &key[..]).unwrap();
    }
}

/// Every key is there with its value, in key order, and nothing else.
fn assert_holds(tree: &sled::Tree, keys: &[[u8; 24]]) {
    let mut expected = keys.to_vec();
    expected.sort_unstable();
    let found: Vec<Vec<u8>> = tree.iter().map(|pair| pair.unwrap().1.to_vec()).collect();
    let expected: Vec<Vec<u8>> = expected.iter().map(|key| key.to_vec()).collect();
    assert_eq!(found, expected);
}

/// `0..n` in a fixed pseudo-random order, the same every run.
fn shuffled(n: u64) -> Vec<u64> {
    let mut numbers: Vec<u64> = (0..n).collect();
    numbers.sort_by_key(|n| (n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(29));
    numbers
}

fn open(dir: &Path) -> (sled::Db, sled::Tree) {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree("events").unwrap();
    (db, tree)
}

/// Inserts `keys` in their order into a fresh tree, checks that it holds them all, and counts its
/// leaves.
fn leaves_after_inserting(keys: &[[u8; 24]]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree) = open(dir.path());
    insert_all(&tree, keys);
    assert_holds(&tree, keys);
    leaves(&tree)
}

/// 2,000 appends to one channel fill leaves to 29 entries each (a leaf splits past 32 and leaves
/// 4 on the right): 69 leaves. Split in the middle, they keep 17 each: 117 leaves (past 16: 154).
#[test]
fn appends_to_one_channel_leave_full_leaves() {
    let keys: Vec<[u8; 24]> = (0..2000).map(|sequence| key(7, sequence)).collect();
    let count = leaves_after_inserting(&keys);
    assert!(count <= 2000 / 24, "{count} leaves for 2,000 ascending keys");
}

/// 16 channels appended to in turn, as the committer writes them: a channel's newest keys share a
/// leaf with the next channel's oldest ones, so an append is not at the leaf's end, but it is in
/// its upper half: 4,800 keys in 176 leaves (in the middle: 272; past 16: 376).
#[test]
fn appends_to_channels_in_turn_leave_full_leaves() {
    let keys: Vec<[u8; 24]> =
        (0..300).flat_map(|sequence| (0..16).map(move |channel| key(channel, sequence))).collect();
    let count = leaves_after_inserting(&keys);
    assert!(count <= 4800 / 24, "{count} leaves for 16 channels of 300 ascending keys");
}

/// Keys in random order (channel records, by name) still split about evenly: 3,000 keys in 153
/// leaves (in the middle: 133; past 16: 269).
#[test]
fn keys_in_random_order_split_about_evenly() {
    let keys: Vec<[u8; 24]> = shuffled(3000).into_iter().map(|n| key(3, n)).collect();
    let count = leaves_after_inserting(&keys);
    assert!(count <= 3000 / 16, "{count} leaves for 3,000 keys in random order");
}

/// Appends of 8 KiB events: a leaf splits past 16 entries, as sled's did, since by then it holds
/// more than 64 KiB: 500 appends in 39 leaves (past 32 entries they would be 18).
#[test]
fn appends_of_large_events_split_past_16() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree) = open(dir.path());
    let event = vec![b'x'; 8 * 1024];
    for sequence in 0..500 {
        tree.insert(key(7, sequence), &event[..]).unwrap();
    }
    assert_eq!(tree.len(), 500);
    let count = leaves(&tree);
    assert!(count >= 500 / 16, "{count} leaves for 500 events of 8 KiB");
}

/// Appends to several channels, then keys in descending and in random order: all found, in
/// order, before and after a reopen.
#[test]
fn keys_in_any_order_are_all_found_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (db, tree) = open(dir.path());
    let appended: Vec<[u8; 24]> =
        (0..300).flat_map(|sequence| (0..16).map(move |channel| key(channel, sequence))).collect();
    let descending: Vec<[u8; 24]> = (0..1000).rev().map(|sequence| key(100, sequence)).collect();
    let random: Vec<[u8; 24]> = shuffled(1000).into_iter().map(|n| key(200, n)).collect();
    let all: Vec<[u8; 24]> = [&appended[..], &descending[..], &random[..]].concat();
    insert_all(&tree, &all);
    assert_holds(&tree, &all);
    db.flush().unwrap();
    drop((tree, db));
    let (_db, tree) = open(dir.path());
    assert_holds(&tree, &all);
}
