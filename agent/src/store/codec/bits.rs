//! MSB-first bit writer and reader for the chunk codec.
//!
//! Invariants: the writer's stream is `buf` followed by the `nacc` (< 64) low bits of `acc`;
//! bits after `bit_len` in the last byte are zero when the stream is exported. The reader never
//! reads past its `end` bit: every read checks the remaining length first and returns
//! [`Truncated`] instead.
//!
//! Casts between integer widths and signedness are the bit format itself (zigzag, two's-
//! complement and IEEE bit patterns, fields read from the bit stream); the round-trip property
//! tests cover them.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

/// A read would go past the end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated;

/// Appends bits, most significant first. Memory is the encoded size plus the growth slack
/// (a quarter, at least 256 bytes).
#[derive(Debug, Clone, Default)]
pub(crate) struct BitWriter {
    /// Whole bytes written so far.
    buf: Vec<u8>,
    /// Pending bits, right-aligned.
    acc: u64,
    /// Number of pending bits in `acc`, always < 64.
    nacc: u32,
}

impl BitWriter {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            acc: 0,
            nacc: 0,
        }
    }

    /// Rebuilds a writer positioned at `bit_len` of `bytes` (a persisted prefix of a stream).
    /// The caller has checked that `bytes` holds at least `bit_len` bits.
    pub(crate) fn from_prefix(bytes: &[u8], bit_len: u64) -> Self {
        let whole = (bit_len / 8) as usize;
        let rest = (bit_len % 8) as u32;
        let mut buf = Vec::with_capacity(bytes.len().max(64));
        buf.extend_from_slice(&bytes[..whole]);
        let acc = if rest == 0 {
            0
        } else {
            u64::from(bytes[whole] >> (8 - rest))
        };
        Self {
            buf,
            acc,
            nacc: rest,
        }
    }

    pub(crate) fn bit_len(&self) -> u64 {
        self.buf.len() as u64 * 8 + u64::from(self.nacc)
    }

    /// Bytes the stream occupies when exported (the last one possibly partial).
    pub(crate) fn byte_len(&self) -> usize {
        self.buf.len() + self.nacc.div_ceil(8) as usize
    }

    /// Heap bytes held (capacity, not length: what RSS sees).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Writes the low `n` bits of `value` (`n` <= 64; higher bits of `value` must be zero).
    #[inline]
    pub(crate) fn write(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        debug_assert!(n == 64 || value >> n == 0);
        if n == 0 {
            return;
        }
        let free = 64 - self.nacc; // 1..=64
        if n < free {
            self.acc = (self.acc << n) | value;
            self.nacc += n;
        } else {
            let rest = n - free; // 0..=63: bits that do not fit this word
            let head = value >> rest;
            let word = if free == 64 {
                head
            } else {
                (self.acc << free) | head
            };
            if self.buf.capacity() - self.buf.len() < 8 {
                self.grow();
            }
            self.buf.extend_from_slice(&word.to_be_bytes());
            self.acc = value & low_mask(rest);
            self.nacc = rest;
        }
    }

    /// Grows by a quarter (at least 256 bytes), not by doubling: thousands of open chunks
    /// hold at most ~25 % slack instead of up to 100 %; copying stays amortised linear.
    #[cold]
    fn grow(&mut self) {
        self.buf.reserve_exact((self.buf.len() / 4).max(256));
    }

    #[inline]
    pub(crate) fn write_bit(&mut self, bit: bool) {
        self.write(u64::from(bit), 1);
    }

    /// Pending bits as whole bytes, zero-padded: (`[u8; 8]`, how many are used).
    fn pending(&self) -> ([u8; 8], usize) {
        if self.nacc == 0 {
            return ([0; 8], 0);
        }
        let aligned = self.acc << (64 - self.nacc);
        (aligned.to_be_bytes(), self.nacc.div_ceil(8) as usize)
    }

    /// Appends to `out` the stream's bytes from byte `from` to its end, the last byte zero-padded.
    pub(crate) fn write_since(&self, from: usize, out: &mut Vec<u8>) {
        if from < self.buf.len() {
            out.extend_from_slice(&self.buf[from..]);
        }
        let (pending, used) = self.pending();
        let skip = from.saturating_sub(self.buf.len()).min(used);
        out.extend_from_slice(&pending[skip..used]);
    }

    /// The whole stream, zero-padded to a byte.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.byte_len());
        self.write_since(0, &mut out);
        out
    }
}

#[inline]
fn low_mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Reads bits, most significant first, from `data` up to bit `end`.
#[derive(Debug, Clone)]
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: u64,
    end: u64,
}

impl<'a> BitReader<'a> {
    /// A reader over the first `end` bits of `data`; `None` when `data` is shorter than that.
    pub(crate) fn new(data: &'a [u8], end: u64) -> Option<Self> {
        (end <= data.len() as u64 * 8).then_some(Self { data, pos: 0, end })
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos == self.end
    }

    /// The next 64 bits from `pos`, left-aligned; bits past the data read as zero. Only the first
    /// `64 - pos % 8` (>= 57) are meaningful.
    #[inline]
    fn peek_word(&self) -> u64 {
        let byte = (self.pos / 8) as usize;
        let word = if let Some(b) = self.data.get(byte..byte + 8) {
            u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        } else {
            let mut b = [0u8; 8];
            let tail = self.data.get(byte..).unwrap_or(&[]);
            b[..tail.len()].copy_from_slice(tail);
            u64::from_be_bytes(b)
        };
        word << (self.pos % 8)
    }

    /// Reads `n` (<= 64) bits.
    #[inline]
    pub(crate) fn read(&mut self, n: u32) -> Result<u64, Truncated> {
        debug_assert!(n <= 64);
        if n == 0 {
            return Ok(0);
        }
        if self.remaining() < u64::from(n) {
            return Err(Truncated);
        }
        if n <= 56 {
            let v = self.peek_word() >> (64 - n);
            self.pos += u64::from(n);
            Ok(v)
        } else {
            let hi = self.read(n - 32)?;
            let lo = self.read(32)?;
            Ok((hi << 32) | lo)
        }
    }

    /// Counts leading one bits (at most `max`), consuming them and the terminating zero if the
    /// count is below `max`.
    #[inline]
    pub(crate) fn read_unary(&mut self, max: u32) -> Result<u32, Truncated> {
        debug_assert!(max < 57);
        let ones = self.peek_word().leading_ones().min(max);
        let len = if ones < max { ones + 1 } else { ones };
        if self.remaining() < u64::from(len) {
            return Err(Truncated);
        }
        self.pos += u64::from(len);
        Ok(ones)
    }

    /// Reads `n` whole bytes into `out`.
    pub(crate) fn read_bytes(&mut self, n: usize, out: &mut Vec<u8>) -> Result<(), Truncated> {
        if self.remaining() / 8 < n as u64 {
            return Err(Truncated);
        }
        out.reserve(n);
        for _ in 0..n {
            out.push(self.read(8)? as u8);
        }
        Ok(())
    }
}
