//! Where a backend's WebSocket byte stream stands among frames: only headers and lengths are
//! read (RFC 6455 §5.2), payloads are skipped by count, nothing is kept but 24 bytes. The pump
//! (`pump.rs`) uses it to put a close frame between two frames, never inside one.

/// Where the backend's byte stream stands among WebSocket frames: only headers and lengths are
/// read (RFC 6455 §5.2), payloads are skipped by count. 24 bytes a tunnel.
#[derive(Debug, Default)]
pub struct Frames {
    /// Header bytes of the frame being read; the header is at most 14 bytes.
    header: [u8; 14],
    seen: u8,
    /// Payload bytes of the current frame still to come.
    payload: u64,
    /// The last whole frame was a close frame.
    pub saw_close: bool,
}

impl Frames {
    /// Between two frames.
    pub fn at_boundary(&self) -> bool {
        self.seen == 0 && self.payload == 0
    }

    /// How many bytes may be read before the next boundary (at least 1 when not at one).
    pub fn until_boundary(&self) -> usize {
        if self.payload > 0 {
            return usize::try_from(self.payload).unwrap_or(usize::MAX);
        }
        match self.header_len() {
            Some(len) => len - usize::from(self.seen),
            None => 1,
        }
    }

    /// The length of the header being read, once its first two bytes are in.
    fn header_len(&self) -> Option<usize> {
        if self.seen < 2 {
            return None;
        }
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    /// Takes in bytes the backend sent.
    pub fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload > 0 {
                let n = usize::try_from(self.payload)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.payload -= n as u64;
                data = &data[n..];
                continue;
            }
            self.header[usize::from(self.seen)] = data[0];
            self.seen += 1;
            data = &data[1..];
            if self.header_len() == Some(usize::from(self.seen)) {
                let h = &self.header;
                self.payload = match h[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                    127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                    n => u64::from(n),
                };
                self.saw_close = h[0] & 0x0f == 0x8;
                self.seen = 0;
            }
        }
    }
}

/// A close frame from a server (unmasked) with `code` and no reason.
pub fn close_frame(code: u16) -> Box<[u8]> {
    let [hi, lo] = code.to_be_bytes();
    Box::new([0x88, 0x02, hi, lo])
}

/// Frames as a backend sends them, for the tests of this file and of the pump.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A server frame (unmasked, FIN) of `opcode` around `payload`.
    pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    pub(crate) fn closing(code: u16) -> Vec<u8> {
        close_frame(code).to_vec()
    }

    #[test]
    fn frame_boundaries_are_found_in_any_split() {
        let mut stream = frame(0x1, b"hello");
        stream.extend(frame(0x2, &vec![7u8; 300]));
        stream.extend(frame(0x2, &vec![9u8; 70_000]));
        // A masked frame, as a client sends: 4 mask bytes after the length.
        stream.extend([0x81, 0x83, 1, 2, 3, 4, b'a', b'b', b'c']);
        for chunk in [1, 2, 3, 7, 13, 4096, stream.len()] {
            let mut f = Frames::default();
            for piece in stream.chunks(chunk) {
                f.advance(piece);
            }
            assert!(f.at_boundary(), "split into {chunk}-byte pieces");
            assert!(!f.saw_close);
        }
        let mut f = Frames::default();
        f.advance(&stream[..3]);
        assert!(!f.at_boundary());
        assert_eq!(f.until_boundary(), 4, "the rest of \"hello\"");
        f.advance(&closing(1000)[..0]);
        let mut f = Frames::default();
        f.advance(&closing(1000));
        assert!(f.at_boundary() && f.saw_close);
    }
}
