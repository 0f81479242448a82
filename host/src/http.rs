//! What the HTTP sources and the HTTP action executor share: reading a
//! response body without letting the other side decide how much memory the
//! host spends on it.

/// A response body read up to a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedBody {
    /// The body's first bytes, at most the cap.
    pub bytes: Vec<u8>,
    /// Whether the body went on past the cap (the rest was not read).
    pub truncated: bool,
}

/// Reads `response`'s body chunk by chunk, keeping at most `max` bytes. At
/// the first byte past `max` it stops reading and says the body was
/// truncated; dropping the response then closes the connection, so a huge
/// or endless body costs one chunk past the cap, not its size.
///
/// The caller decides what a truncated body means: the HTTP sources
/// (`http-json`, `prometheus`, through `sources/fetch.rs`) refuse it, an
/// HTTP action keeps the start as its output excerpt. Bound
/// the time with the request's timeout: this waits for as long as the
/// server takes to send each chunk.
pub async fn read_body_capped(
    response: &mut reqwest::Response,
    max: usize,
) -> Result<CappedBody, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(CappedBody {
                bytes,
                truncated: true,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(CappedBody {
        bytes,
        truncated: false,
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves one request with a body of `size` bytes of `x`, sent in
    /// chunks of 1000 bytes (chunked encoding, so no length announces it).
    async fn serve(size: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let mut left = size;
            while left > 0 {
                let n = left.min(1000);
                let chunk = format!("{n:x}\r\n{}\r\n", "x".repeat(n));
                if socket.write_all(chunk.as_bytes()).await.is_err() {
                    return; // The reader stopped at its cap.
                }
                left -= n;
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
        });
        url
    }

    async fn read(size: usize, max: usize) -> CappedBody {
        let mut response = reqwest::get(serve(size).await).await.unwrap();
        read_body_capped(&mut response, max).await.unwrap()
    }

    #[tokio::test]
    async fn a_body_within_the_cap_is_read_whole() {
        for (size, max) in [(0, 10), (2_500, 10_000), (2_500, 2_500)] {
            let body = read(size, max).await;
            assert_eq!((body.bytes.len(), body.truncated), (size, false), "{size}");
        }
    }

    #[tokio::test]
    async fn a_body_past_the_cap_keeps_its_start_and_says_so() {
        for (size, max) in [(2_501, 2_500), (1_000_000, 1_500), (10, 0)] {
            let body = read(size, max).await;
            assert_eq!((body.bytes.len(), body.truncated), (max, true), "{size}");
            assert!(body.bytes.iter().all(|&b| b == b'x'));
        }
    }
}
