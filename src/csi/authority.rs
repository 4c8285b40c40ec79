//! The CSI socket's HTTP/2 front: every request reaches the gRPC server with an
//! `:authority` it accepts, whatever the client wrote there.
//!
//! gRPC C-core (`grpcio`), `csc` and grpc-go as kubelet and the CSI sidecars have shipped it
//! send the socket's path (`/csi/csi.sock`) as `:authority` when they dial `unix://`. The
//! HTTP/2 layer under tonic (h2) answers such a request with `RST_STREAM PROTOCOL_ERROR`
//! (hyperium/h2#487), and offers no switch to accept it. So each connection passes through
//! this relay: frames go both ways unchanged, except the client's header blocks, which are
//! decoded (HPACK, with the client's own dynamic table: `loona-hpack`), given `localhost` in
//! place of an authority that is no URI authority, and encoded again as literals that are
//! never indexed, so the server's table stays empty and nothing depends on the client's.
//! The frame reading is by hand: it is the eight lines of RFC 9113 §4.1 and no crate offers
//! a frame codec apart from a whole HTTP/2 stack.
//!
//! The relay costs one copy per byte through a socket pair; CSI calls are a few hundred
//! bytes each.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's floor).
const MAX_FRAME: usize = 16_384;
/// Largest header block taken from a client: CSI requests carry a few small headers.
const MAX_BLOCK: usize = 1 << 20;
/// Largest HPACK table a client may ask the relay to keep.
const MAX_TABLE: usize = 1 << 16;
/// The authority given in place of one h2 refuses.
const LOCAL: &[u8] = b"localhost";

/// Accept connections on `listener`, each relayed to the server end of a socket pair;
/// those server ends are what the gRPC server serves.
pub fn front(
    listener: UnixListener,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<UnixStream>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = listener.accept().await;
            let sent = match accepted {
                Ok((client, _)) => match UnixStream::pair() {
                    Ok((relay_end, server_end)) => {
                        tokio::spawn(relay(client, relay_end));
                        tx.send(Ok(server_end)).await
                    }
                    Err(e) => tx.send(Err(e)).await,
                },
                Err(e) => tx.send(Err(e)).await,
            };
            if sent.is_err() {
                return; // the server stopped
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Relay one connection until either side closes it.
async fn relay(client: UnixStream, server: UnixStream) {
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, server_write) = server.into_split();
    let upstream = mend_requests(client_read, server_write);
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        r = upstream => if let Err(e) = r { tracing::debug!("csi socket: a client's connection ends: {e}") },
        _ = downstream => {}
    }
}

/// Copy the client's frames to the server, its header blocks mended.
pub async fn mend_requests(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> io::Result<()> {
    let mut preface = [0u8; 24];
    let n = read_up_to(&mut from, &mut preface).await?;
    to.write_all(&preface[..n]).await?;
    if &preface[..n] != PREFACE {
        // Not HTTP/2 with prior knowledge: the server answers it as it will.
        tokio::io::copy(&mut from, &mut to).await?;
        return Ok(());
    }
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(MAX_TABLE);
    let mut block: Option<Block> = None;
    loop {
        let mut head = [0u8; 9];
        if read_up_to(&mut from, &mut head).await? < head.len() {
            return Ok(());
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let in_block = matches!(&block, Some(b) if b.stream == stream);
        if block.is_some() && !(kind == CONTINUATION && in_block) {
            // RFC 9113 §6.10: nothing but its CONTINUATIONs may follow an open header block.
            return Err(io::Error::other(
                "a frame other than CONTINUATION inside a header block",
            ));
        }
        if kind == HEADERS || kind == CONTINUATION && in_block {
            if len > MAX_BLOCK {
                return Err(io::Error::other("a header frame over 1 MiB"));
            }
            let mut payload = vec![0u8; len];
            from.read_exact(&mut payload).await?;
            let b = match kind {
                HEADERS => block.insert(Block::start(stream, flags, &payload)?),
                _ => block.as_mut().expect("in a block"),
            };
            if kind == CONTINUATION {
                b.fragment.extend_from_slice(&payload);
            }
            if b.fragment.len() > MAX_BLOCK {
                return Err(io::Error::other("a header block over 1 MiB"));
            }
            if flags & END_HEADERS != 0 {
                let b = block.take().expect("in a block");
                to.write_all(&b.mended(&mut decoder)?).await?;
            }
        } else {
            // Any other frame (or one out of place, for the server to refuse) as it came.
            to.write_all(&head).await?;
            let copied = tokio::io::copy(&mut (&mut from).take(len as u64), &mut to).await?;
            if copied < len as u64 {
                return Ok(());
            }
        }
    }
}

/// Read until `buf` is full or the stream ends; how many bytes were read.
async fn read_up_to(from: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match from.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A header block being gathered from a HEADERS frame and its CONTINUATIONs.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

impl Block {
    /// The block a HEADERS frame opens: its padding dropped, its priority kept.
    fn start(stream: u32, flags: u8, payload: &[u8]) -> io::Result<Block> {
        let malformed = || io::Error::other("a malformed HEADERS frame");
        let mut body = payload;
        let mut pad = 0;
        if flags & PADDED != 0 {
            pad = *body.first().ok_or_else(malformed)? as usize;
            body = &body[1..];
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            let fields: [u8; 5] = body
                .get(..5)
                .ok_or_else(malformed)?
                .try_into()
                .expect("5 bytes");
            priority = Some(fields);
            body = &body[5..];
        }
        let fragment = body
            .get(..body.len().checked_sub(pad).ok_or_else(malformed)?)
            .ok_or_else(malformed)?;
        Ok(Block {
            stream,
            end_stream: flags & END_STREAM != 0,
            priority,
            fragment: fragment.to_vec(),
        })
    }

    /// The block's frames as the server gets them.
    fn mended(self, decoder: &mut loona_hpack::Decoder) -> io::Result<Vec<u8>> {
        let headers = decoder
            .decode(&self.fragment)
            .map_err(|e| io::Error::other(format!("a header block HPACK cannot read: {e:?}")))?;
        let mut encoded = Vec::with_capacity(self.fragment.len() + 64);
        for (name, value) in &headers {
            let value = if name == b":authority" && !is_authority(value) {
                LOCAL
            } else {
                value.as_slice()
            };
            encode_never_indexed(name, value, &mut encoded);
        }
        Ok(frames(
            self.stream,
            self.end_stream,
            self.priority,
            &encoded,
        ))
    }
}

/// Would h2 take this as an authority?
fn is_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// HPACK's "literal header field never indexed, new name" (RFC 7541 §6.2.3), strings
/// without Huffman coding.
fn encode_never_indexed(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x10);
    for s in [name, value] {
        encode_integer(s.len(), 7, 0x00, out);
        out.extend_from_slice(s);
    }
}

/// HPACK's integer with an `n`-bit prefix (RFC 7541 §5.1); `high` holds the first byte's
/// other bits.
fn encode_integer(mut value: usize, n: u32, high: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A HEADERS frame (with CONTINUATIONs when the block is larger than a frame).
fn frames(stream: u32, end_stream: bool, priority: Option<[u8; 5]>, block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() + 32);
    let first_room = MAX_FRAME - if priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let priority = priority.as_ref().map_or(&[][..], |p| &p[..]);
    frame_head(
        priority.len() + first.len(),
        HEADERS,
        flags,
        stream,
        &mut out,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, more) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if more.is_empty() { END_HEADERS } else { 0 };
        frame_head(chunk.len(), CONTINUATION, flags, stream, &mut out);
        out.extend_from_slice(chunk);
        rest = more;
    }
    out
}

fn frame_head(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(frames_bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        // Gather the block from HEADERS + CONTINUATION frames and decode it afresh.
        let mut block = Vec::new();
        let mut rest = frames_bytes;
        while rest.len() >= 9 {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[9..9 + len];
            let skip = if kind == HEADERS && flags & PRIORITY != 0 {
                5
            } else {
                0
            };
            block.extend_from_slice(&payload[skip..]);
            rest = &rest[9 + len..];
        }
        loona_hpack::Decoder::new().decode(&block).unwrap()
    }

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), b"/csi.v1.Identity/Probe".to_vec()),
            (b":authority".to_vec(), authority.to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
        ]
    }

    /// A client's connection: preface, SETTINGS, and one HEADERS frame per request, the
    /// headers encoded by a stateful HPACK encoder (the dynamic table in use).
    fn client_bytes(requests: &[Vec<(Vec<u8>, Vec<u8>)>], padded: bool) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        frame_head(0, 0x4, 0, 0, &mut out);
        let mut encoder = loona_hpack::Encoder::new();
        for (i, headers) in requests.iter().enumerate() {
            let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
            let stream = 1 + 2 * i as u32;
            if padded {
                let mut payload = vec![3u8];
                payload.extend_from_slice(&block);
                payload.extend_from_slice(&[0, 0, 0]);
                frame_head(
                    payload.len(),
                    HEADERS,
                    END_HEADERS | PADDED,
                    stream,
                    &mut out,
                );
                out.extend_from_slice(&payload);
            } else {
                // Split across a CONTINUATION.
                let (a, b) = block.split_at(block.len() / 2);
                frame_head(a.len(), HEADERS, 0, stream, &mut out);
                out.extend_from_slice(a);
                frame_head(b.len(), CONTINUATION, END_HEADERS, stream, &mut out);
                out.extend_from_slice(b);
            }
            frame_head(5, 0x0, END_STREAM, stream, &mut out);
            out.extend_from_slice(&[0, 0, 0, 0, 0]);
        }
        out
    }

    async fn mend(input: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        mend_requests(&input[..], &mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_path_authority_becomes_localhost_and_every_other_header_and_frame_stays() {
        let requests = vec![
            request(b"/var/lib/kubelet/plugins/csi.hoist.dev/csi.sock"),
            request(b"/var/lib/kubelet/plugins/csi.hoist.dev/csi.sock"),
            request(b"localhost:50051"),
        ];
        for padded in [false, true] {
            let out = mend(client_bytes(&requests, padded)).await;
            assert_eq!(&out[..24], PREFACE);
            // SETTINGS as it came, then per request a HEADERS block and its DATA.
            let mut rest = &out[24..];
            let mut blocks = Vec::new();
            let mut data = 0;
            while !rest.is_empty() {
                let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
                match rest[3] {
                    HEADERS => blocks.push(decode_all(&rest[..9 + len])),
                    0x0 => data += 1,
                    _ => {}
                }
                rest = &rest[9 + len..];
            }
            assert_eq!(data, 3);
            assert_eq!(blocks.len(), 3);
            assert_eq!(blocks[0], request(b"localhost"));
            assert_eq!(
                blocks[1],
                request(b"localhost"),
                "the client's dynamic table is read"
            );
            assert_eq!(
                blocks[2],
                request(b"localhost:50051"),
                "a valid authority stays"
            );
        }
    }

    #[tokio::test]
    async fn a_large_block_is_split_and_what_is_not_http2_passes_as_it_is() {
        let mut big = request(b"/csi.sock");
        big.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let out = mend(client_bytes(&[big.clone()], false)).await;
        let mut rest = &out[24 + 9..];
        let mut kinds = Vec::new();
        let mut block_frames = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            assert!(len <= MAX_FRAME);
            kinds.push(rest[3]);
            if rest[3] != 0x0 {
                block_frames.extend_from_slice(&rest[..9 + len]);
            }
            rest = &rest[9 + len..];
        }
        assert_eq!(kinds, [HEADERS, CONTINUATION, CONTINUATION, 0x0]);
        let mut want = big;
        want[3].1 = b"localhost".to_vec();
        assert_eq!(decode_all(&block_frames), want);

        let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(mend(http1.clone()).await, http1);
    }

    #[tokio::test]
    async fn a_frame_inside_an_open_header_block_ends_the_connection() {
        let mut input = PREFACE.to_vec();
        frame_head(3, HEADERS, 0, 1, &mut input);
        input.extend_from_slice(&[0x82, 0x86, 0x84]);
        frame_head(0, 0x4, 0, 0, &mut input); // SETTINGS where a CONTINUATION must be
        let mut out = Vec::new();
        assert!(mend_requests(&input[..], &mut out).await.is_err());
        assert_eq!(out, PREFACE, "nothing of the block was passed on");
    }

    #[test]
    fn integers_take_their_prefix_then_seven_bits_a_byte() {
        let mut out = Vec::new();
        encode_integer(10, 5, 0, &mut out);
        encode_integer(1337, 5, 0, &mut out);
        assert_eq!(out, [10, 31, 154, 10], "RFC 7541 C.1.1 and C.1.2");
        assert!(is_authority(b"localhost:5000") && !is_authority(b"/csi/csi.sock"));
    }
}
