//! `vaultlet-hostile-pod`: a pod that tries to exhaust the agent, for the test
//! that shows it cannot (run in the pod's cgroup). It opens `--connections`
//! connections: on half, an HTTP/2 request whose header block never ends (no
//! CONTINUATION follows); on the other half, `--streams` requests each, with
//! headers of about `--header-bytes`, whose bodies never come. Prints `ready`
//! once all are open, then holds them until its standard input closes.

use std::io::BufRead;
use std::path::PathBuf;

use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    token_file: PathBuf,
    #[arg(long)]
    connections: usize,
    #[arg(long)]
    streams: usize,
    #[arg(long)]
    header_bytes: usize,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file).expect("token file");
    let pad = "x".repeat(args.header_bytes);
    let mut held_raw = Vec::new();
    let mut held_h2 = Vec::new();
    let (mut opened, mut refused) = (0usize, 0usize);
    for i in 0..args.connections {
        let Ok(mut stream) = UnixStream::connect(&args.socket).await else {
            refused += 1;
            continue;
        };
        if i % 2 == 0 {
            if stream.write_all(&unfinished_headers(&pad)).await.is_ok() {
                held_raw.push(stream);
            }
            continue;
        }
        let Ok((client, connection)) = h2::client::handshake(stream).await else {
            refused += 1;
            continue;
        };
        tokio::spawn(connection);
        let mut sends = Vec::new();
        for _ in 0..args.streams {
            let mut client = match client.clone().ready().await {
                Ok(c) => c,
                Err(_) => break,
            };
            let request = http::Request::post("http://localhost/vaultlet.v1.Secrets/GetSecrets")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {}", token.trim()))
                .header("x-pad", pad.as_str())
                .body(())
                .expect("a request");
            // The body stream stays open: its data never comes.
            match client.send_request(request, false) {
                Ok(sent) => {
                    opened += 1;
                    sends.push(sent);
                }
                Err(_) => break,
            }
        }
        held_h2.push((client, sends));
    }
    println!("ready {} raw, {} h2, {opened} streams, {refused} refused", held_raw.len(), held_h2.len());
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().lock().read_line(&mut String::new())).await;
    drop((held_raw, held_h2));
}

/// The preface, empty SETTINGS, and a HEADERS frame for stream 1 without
/// END_HEADERS: the server must keep the block until a CONTINUATION that never comes.
fn unfinished_headers(pad: &str) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    // HPACK: a literal header field without indexing, new name.
    let mut block = vec![0x00];
    block.extend(hpack_string(b"x-pad"));
    block.extend(hpack_string(pad.as_bytes()));
    out.extend(frame(0x1, 0, 1, &block));
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK string literal, not Huffman-coded (7-bit prefix length).
fn hpack_string(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend(s);
    out
}
