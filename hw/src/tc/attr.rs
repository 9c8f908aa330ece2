//! Netlink attributes (`struct nlattr`): a checked zero-copy view, an
//! iterator over a run of attributes, and a writer that appends them to a
//! message buffer.
//!
//! Written here rather than taken from neli's `Rtattr`: neli decodes every
//! attribute into an owned tree, while a stats dump of tens of thousands of
//! filters wants to be walked in place, and a batch of installs wants to be
//! written straight into one send buffer.

use core::fmt;

pub const HEADER_LEN: usize = 4;
pub const F_NESTED: u16 = 1 << 15;
pub const F_NET_BYTEORDER: u16 = 1 << 14;
pub const TYPE_MASK: u16 = !(F_NESTED | F_NET_BYTEORDER);

/// Rounds a length up to the 4-byte netlink alignment.
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Why bytes from the kernel (or a recording) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what}: truncated: {have} bytes, need {need}")]
    Truncated { what: &'static str, have: usize, need: usize },
    #[error("{what}: bad length {len}")]
    BadLength { what: &'static str, len: usize },
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
}

/// One attribute: 2-byte length (header included), 2-byte type, payload.
#[derive(Clone, Copy)]
pub struct Attr<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Attr<T> {
    /// Wraps a buffer without checking it; accessors may panic on short
    /// buffers. Use [`Attr::new_checked`] for bytes from outside.
    pub fn new_unchecked(buffer: T) -> Attr<T> {
        Attr { buffer }
    }

    /// Wraps a buffer that starts with an attribute, checking that its
    /// length field is sane and within the buffer.
    pub fn new_checked(buffer: T) -> Result<Attr<T>, WireError> {
        let attr = Attr { buffer };
        attr.check_len()?;
        Ok(attr)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated { what: "nlattr header", have: b.len(), need: HEADER_LEN });
        }
        let len = self.len();
        if len < HEADER_LEN {
            return Err(WireError::BadLength { what: "nlattr", len });
        }
        if len > b.len() {
            return Err(WireError::Truncated { what: "nlattr", have: b.len(), need: len });
        }
        Ok(())
    }

    /// The length field: header plus payload, without trailing padding.
    pub fn len(&self) -> usize {
        let b = self.buffer.as_ref();
        u16::from_ne_bytes([b[0], b[1]]) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == HEADER_LEN
    }

    /// The attribute type with the nested / byte-order flags stripped.
    pub fn kind(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_ne_bytes([b[2], b[3]]) & TYPE_MASK
    }

    pub fn is_nested(&self) -> bool {
        let b = self.buffer.as_ref();
        u16::from_ne_bytes([b[2], b[3]]) & F_NESTED != 0
    }

    /// The bytes this attribute occupies including padding, capped at the
    /// buffer (the last attribute of a message may lack its padding).
    pub fn padded_len(&self) -> usize {
        align(self.len()).min(self.buffer.as_ref().len())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Attr<&'a T> {
    pub fn payload(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        &b[HEADER_LEN..u16::from_ne_bytes([b[0], b[1]]) as usize]
    }

    /// Iterates the attributes nested in this one.
    pub fn nested(&self) -> AttrIter<'a> {
        AttrIter::new(self.payload())
    }

    pub fn u8(&self) -> Result<u8, WireError> {
        Ok(fixed::<1>(self.payload(), "u8 attribute")?[0])
    }

    pub fn u16_ne(&self) -> Result<u16, WireError> {
        Ok(u16::from_ne_bytes(fixed(self.payload(), "u16 attribute")?))
    }

    pub fn u16_be(&self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(fixed(self.payload(), "be16 attribute")?))
    }

    pub fn u32_ne(&self) -> Result<u32, WireError> {
        Ok(u32::from_ne_bytes(fixed(self.payload(), "u32 attribute")?))
    }

    pub fn u64_ne(&self) -> Result<u64, WireError> {
        Ok(u64::from_ne_bytes(fixed(self.payload(), "u64 attribute")?))
    }

    /// A NUL-terminated string attribute, without its terminator.
    pub fn str(&self) -> Result<&'a str, WireError> {
        let p = self.payload();
        let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
        core::str::from_utf8(&p[..end])
            .map_err(|e| WireError::Invalid { what: "string attribute", message: e.to_string() })
    }
}

/// The payload as an exact-size array, or a length error.
fn fixed<const N: usize>(p: &[u8], what: &'static str) -> Result<[u8; N], WireError> {
    p.try_into().map_err(|_| WireError::BadLength { what, len: p.len() })
}

impl<T: AsRef<[u8]>> fmt::Debug for Attr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attr {{ kind: {}, len: {}, nested: {} }}", self.kind(), self.len(), self.is_nested())
    }
}

/// Walks a run of attributes; stops with an error at the first bad one.
#[derive(Clone)]
pub struct AttrIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> AttrIter<'a> {
    pub fn new(buffer: &'a [u8]) -> AttrIter<'a> {
        AttrIter { rest: buffer, failed: false }
    }

    /// The first attribute of the given type, skipping bad trailing bytes
    /// only after an error has been reported by `next`.
    pub fn find(mut self, kind: u16) -> Result<Option<Attr<&'a [u8]>>, WireError> {
        for a in self.by_ref() {
            let a = a?;
            if a.kind() == kind {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = Result<Attr<&'a [u8]>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match Attr::new_checked(self.rest) {
            Ok(a) => {
                let step = a.padded_len();
                let (this, rest) = self.rest.split_at(step);
                self.rest = rest;
                Some(Ok(Attr::new_unchecked(this)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Appends attributes to a buffer, keeping the netlink alignment.
pub struct AttrWriter<'a> {
    buf: &'a mut Vec<u8>,
}

/// An open nest: the offset of its header, closed by [`AttrWriter::end_nest`].
#[must_use = "a nest must be closed with end_nest"]
pub struct Nest(usize);

impl<'a> AttrWriter<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> AttrWriter<'a> {
        AttrWriter { buf }
    }

    fn pad(&mut self) {
        let aligned = align(self.buf.len());
        self.buf.resize(aligned, 0);
    }

    pub fn put(&mut self, kind: u16, payload: &[u8]) {
        let len = (HEADER_LEN + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    pub fn put_u8(&mut self, kind: u16, v: u8) {
        self.put(kind, &[v]);
    }

    pub fn put_u16_ne(&mut self, kind: u16, v: u16) {
        self.put(kind, &v.to_ne_bytes());
    }

    pub fn put_u16_be(&mut self, kind: u16, v: u16) {
        self.put(kind, &v.to_be_bytes());
    }

    pub fn put_u32_ne(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_ne_bytes());
    }

    /// A string with its NUL terminator, as the kernel's NLA_STRING wants.
    pub fn put_str(&mut self, kind: u16, s: &str) {
        let len = (HEADER_LEN + s.len() + 1) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    pub fn begin_nest(&mut self, kind: u16) -> Nest {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(kind | F_NESTED).to_ne_bytes());
        Nest(at)
    }

    pub fn end_nest(&mut self, nest: Nest) {
        let len = (self.buf.len() - nest.0) as u16;
        self.buf[nest.0..nest.0 + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_aligned_and_reads_back() {
        let mut buf = Vec::new();
        let mut w = AttrWriter::new(&mut buf);
        w.put_str(1, "flower");
        let n = w.begin_nest(2);
        w.put_u8(9, 6);
        w.put_u16_be(19, 443);
        w.end_nest(n);
        w.put_u32_ne(22, 0x8);
        assert_eq!(buf.len() % 4, 0);
        // "flower\0" is 7 bytes: 4 + 7 = 11, padded to 12.
        assert_eq!(&buf[..4], &[11, 0, 1, 0]);

        let attrs: Vec<_> = AttrIter::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(attrs.len(), 3);
        assert_eq!(attrs[0].str().unwrap(), "flower");
        assert!(attrs[1].is_nested());
        assert_eq!(attrs[1].kind(), 2);
        let inner: Vec<_> = attrs[1].nested().collect::<Result<_, _>>().unwrap();
        assert_eq!(inner[0].u8().unwrap(), 6);
        assert_eq!(inner[1].u16_be().unwrap(), 443);
        assert_eq!(attrs[2].u32_ne().unwrap(), 8);
        assert_eq!(AttrIter::new(&buf).find(22).unwrap().unwrap().u32_ne().unwrap(), 8);
        assert!(AttrIter::new(&buf).find(99).unwrap().is_none());
    }

    #[test]
    fn rejects_bad_lengths() {
        // Length 2 is shorter than the header.
        assert!(matches!(Attr::new_checked(&[2u8, 0, 1, 0][..]), Err(WireError::BadLength { .. })));
        // Length 8 but only 6 bytes present.
        assert!(matches!(
            Attr::new_checked(&[8u8, 0, 1, 0, 0, 0][..]),
            Err(WireError::Truncated { need: 8, have: 6, .. })
        ));
        assert!(Attr::new_checked(&[1u8][..]).is_err());
        // The iterator reports the bad attribute once, then stops.
        let buf = [8u8, 0, 1, 0, 1, 2, 3, 4, 9, 0, 2, 0];
        let items: Vec<_> = AttrIter::new(&buf).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
    }

    #[test]
    fn typed_reads_check_payload_size() {
        let buf = [6u8, 0, 3, 0, 1, 2, 0, 0];
        let a = Attr::new_checked(&buf[..]).unwrap();
        assert_eq!(a.payload(), &[1, 2]);
        assert!(a.u32_ne().is_err());
        assert!(a.u8().is_err());
        assert_eq!(a.u16_be().unwrap(), 0x0102);
        assert_eq!(a.padded_len(), 8);
    }
}
