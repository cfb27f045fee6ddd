//! Test-only: the deterministic random input the front ends' "never panics,
//! stays bounded" tests share. A xorshift generator instead of a crate, so
//! every run and platform sees the same sequences and a failure replays.

/// xorshift64 (Marsaglia): deterministic, seeded by the test.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Up to 24 pieces: mostly `fragments` (which steer the input into every
/// state of a front end), some random bytes, now and then a run of `x` up
/// to twice `max_line`, to reach the line caps.
pub(crate) fn random_input(rng: &mut XorShift, fragments: &[&[u8]], max_line: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(24) {
        match rng.below(10) {
            0..=5 => out.extend_from_slice(fragments[rng.below(fragments.len())]),
            6..=8 => out.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
            _ => out.extend(std::iter::repeat_n(b'x', rng.below(2 * max_line))),
        }
    }
    out
}

/// What one `step` of a front end did, as far as the feeding loop cares.
pub(crate) enum Fed {
    /// It wants more bytes.
    NeedMore,
    /// It closed the session: the rest of the input is never read.
    Closed,
    /// It acted on a command and may act on more of the buffer.
    Progress,
}

/// Feeds `input` in random chunks through `step`, as reads from a socket
/// would arrive: after each chunk `step` runs until it needs more (within
/// a bound: a front end that never asks for more is a bug), and the buffer
/// it leaves may never exceed `max_buffered`.
pub(crate) fn feed_in_random_chunks(
    rng: &mut XorShift,
    input: &[u8],
    max_buffered: usize,
    mut step: impl FnMut(&mut Vec<u8>) -> Fed,
) {
    let mut buf = Vec::new();
    let mut rest = input;
    'feed: while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        for _ in 0..=buf.len() + 1 {
            match step(&mut buf) {
                Fed::NeedMore => {
                    assert!(buf.len() <= max_buffered, "{}", buf.len());
                    continue 'feed;
                }
                Fed::Closed => return,
                Fed::Progress => {}
            }
        }
        panic!("step did not reach NeedMore");
    }
}
