//! A TCP proxy in front of a server that can hold back the server's replies, as a congested
//! network or a stalled Redis would: requests pass at once (so a script runs), answers arrive
//! late (so the api's deadline passes first); or that cuts a connection instead of passing on
//! the reply to a given command, as a server dying right after it ran the command would. Stopped, with every
//! connection, when dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct DelayProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    delay_ms: AtomicU64,
    /// (request marker, reply marker): once a request holding the first has passed, the first
    /// reply chunk holding the second is dropped with its connection.
    cut: Mutex<Option<(&'static [u8], &'static [u8])>>,
    /// The request was seen: the reply is cut when it comes.
    armed: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every connection, to shut them down on drop.
    streams: Mutex<Vec<TcpStream>>,
}

impl DelayProxy {
    /// Proxies a free loopback port to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            delay_ms: AtomicU64::new(0),
            cut: Mutex::new(None),
            armed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            // Upstream down (a Redis restarting): drop the client, as a refused
                            // connection would.
                            if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                                relay(&shared, client, server);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        DelayProxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// From now on every reply chunk of the server is held back this long (0: none).
    pub fn delay_replies(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Once a request holding `request` (a command's name, say `EVALSHA`) has been passed to
    /// the server, the reply holding `reply` never arrives: the proxy closes that connection
    /// instead, both ways. The command was sent, so it ran; its client cannot know. Other
    /// traffic (a health check, a key lookup) passes untouched.
    pub fn cut_reply(&self, request: &'static [u8], reply: &'static [u8]) {
        *self.shared.cut.lock().unwrap() = Some((request, reply));
    }
}

fn relay(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let mut streams = shared.streams.lock().unwrap();
        streams.push(client.try_clone().unwrap());
        streams.push(server.try_clone().unwrap());
    }
    let pump = |mut from: TcpStream, mut to: TcpStream, delayed: bool, shared: Arc<Shared>| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let holds = |marker: &[u8]| chunk.windows(marker.len()).any(|w| w == marker);
                if !delayed {
                    let cut = shared.cut.lock().unwrap();
                    if cut.is_some_and(|(request, _)| holds(request)) {
                        shared.armed.store(true, Ordering::SeqCst);
                    }
                } else if shared.armed.load(Ordering::SeqCst) {
                    let mut cut = shared.cut.lock().unwrap();
                    if cut.is_some_and(|(_, reply)| holds(reply)) {
                        *cut = None;
                        shared.armed.store(false, Ordering::SeqCst);
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                }
                let delay = shared.delay_ms.load(Ordering::Relaxed);
                if delayed && delay > 0 {
                    std::thread::sleep(Duration::from_millis(delay));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    pump(
        client.try_clone().unwrap(),
        server.try_clone().unwrap(),
        false,
        shared.clone(),
    );
    pump(server, client, true, shared.clone());
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for stream in self.shared.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}
