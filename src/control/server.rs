//! The control socket: accepts clients on a Unix stream socket, reads
//! their requests within size and time bounds, and hands each one to the
//! engine thread as a [`Job`] over a channel. The engine thread answers
//! between packet batches; the packet path never takes a lock for this.
//!
//! Each client has a thread of its own, so one that stalls holds nothing
//! but its thread, and only until `REQUEST_TIMEOUT` cuts it off.
//!
//! Clients that connect and send nothing can't lock others out: once more
//! than `MAX_CLIENTS - RESERVE` are connected, every new client makes room
//! by closing the connection idle the longest (idle: waiting for a
//! request), so `RESERVE` slots stay for clients with something to ask.
//! Subscribers are never idle in that sense and hold their connection as
//! long as they read, so at most `MAX_SUBSCRIBERS` of them are taken.
//!
//! The accept thread waits in poll(2) on the listening socket and on a
//! wake-up socket that dropping the [`Server`] closes, so it stops even
//! when the socket file has been removed and nobody can connect to it.

use super::{parse_request, Command, ControlError, ErrorCode, Response, MAX_REQUEST_BYTES, REQUEST_TIMEOUT, VERSION};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most clients served at once; past it, with no idle one to close, a new
/// client is told `busy`.
pub const MAX_CLIENTS: usize = 64;
/// Slots kept for new clients: past `MAX_CLIENTS - RESERVE` connections,
/// each new one closes the longest idle one.
pub const RESERVE: usize = 8;
/// Most event subscribers at once; past it `subscribe` is answered `busy`.
pub const MAX_SUBSCRIBERS: usize = 16;
/// How long a client thread waits for the engine thread's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for a bulk command (`flush`, `unoffload --filter`): its flows
/// go to the workers in pieces within their control budget, so a million
/// of them on a busy worker take tens of seconds.
pub const BULK_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests waiting for the engine thread before senders wait.
pub const JOB_QUEUE: usize = 256;
/// Event lines buffered per subscriber; one that falls this far behind is cut off.
pub const SUBSCRIBER_QUEUE: usize = 65_536;
/// The socket's mode: owner and group may talk to the daemon.
pub const SOCKET_MODE: u32 = 0o660;

/// One request for the engine thread, with where its answer goes.
pub struct Job {
    pub cmd: Command,
    pub reply: Sender<Result<Answer, ControlError>>,
}

/// What the engine thread answers.
pub enum Answer {
    Value(Value),
    /// A subscription: event lines (JSON objects) until the sender is dropped.
    Events(Subscription),
}

/// The client's end of an event subscription.
pub struct Subscription {
    pub events: Receiver<Arc<str>>,
    /// Set by the engine thread when it cut the subscriber off for lagging.
    pub lagged: Arc<AtomicBool>,
}

/// The engine's end of an event subscription.
pub struct Subscriber {
    pub events: Sender<Arc<str>>,
    pub lagged: Arc<AtomicBool>,
    /// Only the events of the flows this selects (parsed once, at subscribing).
    pub filter: Option<crate::daemon::filter::Filter>,
}

/// A new subscription's two ends.
pub fn subscription() -> (Subscriber, Subscription) {
    let (tx, rx) = bounded(SUBSCRIBER_QUEUE);
    let lagged = Arc::new(AtomicBool::new(false));
    (Subscriber { events: tx, lagged: lagged.clone(), filter: None }, Subscription { events: rx, lagged })
}

/// The queue jobs travel on, engine thread at the receiving end.
pub fn job_queue() -> (Sender<Job>, Receiver<Job>) {
    bounded(JOB_QUEUE)
}

/// The running server. Dropping it stops accepting and removes the socket.
pub struct Server {
    path: PathBuf,
    /// Identifies our socket file, so we never remove another's.
    ino: u64,
    stop: Arc<AtomicBool>,
    /// Closing it wakes the accept thread.
    wake: Option<UnixStream>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds the socket (mode 0660), replacing a stale one left by a daemon
    /// that died, and starts accepting. Refuses when another daemon is
    /// serving the path or the path is something other than a socket.
    pub fn start(path: &Path, jobs: Sender<Job>) -> Result<Server, String> {
        let shown = path.display();
        super::socket_path_fits(path)?;
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(format!("{shown}: another daemon is serving this socket"));
                }
                std::fs::remove_file(path).map_err(|e| format!("{shown}: removing the stale socket: {e}"))?;
                tracing::info!(socket = %shown, "removed a stale socket left by a daemon that did not exit cleanly");
            }
            Ok(_) => return Err(format!("{shown}: exists and is not a socket; not replacing it")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{shown}: {e}")),
        }
        // The socket is created with the umask's mode: narrow it for the
        // bind so there is no moment when others may connect.
        // SAFETY: umask only swaps the process's file mode mask.
        let old_mask = unsafe { libc::umask(0o117) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old_mask) };
        let listener = bound.map_err(|e| match (e.kind(), path.parent().filter(|d| !d.as_os_str().is_empty())) {
            (io::ErrorKind::NotFound, Some(dir)) if !dir.is_dir() => {
                format!("{shown}: cannot listen: the directory {} does not exist", dir.display())
            }
            _ => format!("{shown}: cannot listen: {}", crate::report::io_error(&e)),
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| format!("{shown}: setting mode {SOCKET_MODE:o}: {e}"))?;
        let ino = std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0);
        listener.set_nonblocking(true).map_err(|e| format!("{shown}: {e}"))?;
        let (wake, woken) = UnixStream::pair().map_err(|e| format!("control socket wake-up: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("control-accept".into())
                .spawn(move || accept_loop(listener, woken, jobs, stop))
                .map_err(|e| format!("starting the control thread: {e}"))?
        };
        Ok(Server { path: path.to_path_buf(), ino, stop, wake: Some(wake), accept: Some(accept) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept thread's poll, whether or not the socket file
        // is still there to connect to.
        if let Some(wake) = self.wake.take() {
            let _ = wake.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(socket = %self.path.display(), error = %e, "could not remove the control socket");
            }
        }
    }
}

/// One connected client, as the accept thread sees it.
struct Client {
    /// A handle on its connection, to close it to make room.
    stream: UnixStream,
    /// Since when it has been waiting for a request; `None` while a request
    /// is being answered or events streamed.
    idle_since: Option<Instant>,
    subscriber: bool,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    clients: HashMap<u64, Client>,
}

type Clients = Arc<Mutex<Registry>>;

fn lock(clients: &Clients) -> std::sync::MutexGuard<'_, Registry> {
    // A client thread that panicked leaves the registry consistent.
    clients.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client thread's entry in the registry, removed when the thread ends.
struct Entry {
    id: u64,
    clients: Clients,
}

impl Entry {
    fn set_idle(&self, idle: bool) {
        if let Some(c) = lock(&self.clients).clients.get_mut(&self.id) {
            // Idle since it was taken in or last answered: a handler thread
            // starting late must not make its connection look younger.
            if idle {
                c.idle_since.get_or_insert_with(Instant::now);
            } else {
                c.idle_since = None;
            }
        }
    }

    /// Takes a subscriber slot, if one is free.
    fn take_subscriber_slot(&self) -> bool {
        let mut reg = lock(&self.clients);
        if reg.clients.values().filter(|c| c.subscriber).count() >= MAX_SUBSCRIBERS {
            return false;
        }
        if let Some(c) = reg.clients.get_mut(&self.id) {
            c.subscriber = true;
        }
        true
    }

    fn release_subscriber_slot(&self) {
        if let Some(c) = lock(&self.clients).clients.get_mut(&self.id) {
            c.subscriber = false;
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        lock(&self.clients).clients.remove(&self.id);
    }
}

/// Waits until the listener has a connection (true) or the wake-up socket
/// is closed (false).
fn wait_readable(listener: &UnixListener, woken: &UnixStream) -> bool {
    loop {
        let mut fds = [
            libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: woken.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfd entries whose descriptors outlive the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(error = %io::Error::last_os_error(), "waiting for control clients failed");
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

fn refuse(stream: &mut UnixStream, err: ControlError) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = write_response(stream, &Response::err(Value::Null, err));
}

/// Makes room for a new client when the reserve is reached, by closing the
/// connection idle the longest. Whether the new client may be served.
fn make_room(reg: &mut Registry) -> bool {
    if reg.clients.len() < MAX_CLIENTS - RESERVE {
        return true;
    }
    let oldest = reg.clients.iter().filter_map(|(id, c)| c.idle_since.map(|t| (t, *id))).min().map(|(_, id)| id);
    if let Some(mut idle) = oldest.and_then(|id| reg.clients.remove(&id)) {
        refuse(
            &mut idle.stream,
            ControlError::new(
                ErrorCode::Timeout,
                format!("{} clients connected: closing this idle connection to make room", reg.clients.len() + 1),
            ),
        );
        // Its thread, waiting for a request, reads the end of the stream.
        let _ = idle.stream.shutdown(Shutdown::Both);
        tracing::debug!("closed an idle control client to make room for a new one");
        return true;
    }
    reg.clients.len() < MAX_CLIENTS
}

fn accept_loop(listener: UnixListener, woken: UnixStream, jobs: Sender<Job>, stop: Arc<AtomicBool>) {
    let clients: Clients = Arc::default();
    while wait_readable(&listener, &woken) {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a control client failed");
                // Out of descriptors and the like: don't spin on it.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // The listener is non-blocking; its clients are served blocking.
        let registered = stream.set_nonblocking(false).and_then(|()| stream.try_clone());
        let Ok(handle) = registered else { continue };
        let mut reg = lock(&clients);
        if !make_room(&mut reg) {
            drop(reg);
            refuse(
                &mut stream,
                ControlError::new(
                    ErrorCode::Busy,
                    format!("{MAX_CLIENTS} clients are connected and none is idle; try again later"),
                ),
            );
            continue;
        }
        let id = reg.next_id;
        reg.next_id += 1;
        reg.clients.insert(id, Client { stream: handle, idle_since: Some(Instant::now()), subscriber: false });
        drop(reg);
        let entry = Entry { id, clients: clients.clone() };
        let jobs = jobs.clone();
        let spawned = std::thread::Builder::new().name("control-client".into()).spawn(move || {
            serve_client(stream, &jobs, &entry);
        });
        if let Err(e) = spawned {
            // The closure, and the entry in it, were dropped.
            tracing::warn!(error = %e, "could not start a thread for a control client");
        }
    }
}

enum ReadError {
    TooLarge,
    Timeout,
    Io,
}

/// Reads one line of at most `max` bytes, all of it within `timeout`.
/// `Ok(false)` at end of stream with nothing read.
fn read_line_bounded(
    reader: &mut BufReader<UnixStream>,
    out: &mut Vec<u8>,
    max: usize,
    timeout: Duration,
) -> Result<bool, ReadError> {
    out.clear();
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadError::Timeout);
        }
        reader.get_ref().set_read_timeout(Some(remaining)).map_err(|_| ReadError::Io)?;
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ReadError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadError::Io),
        };
        if buf.is_empty() {
            // A last request without its newline still counts.
            return Ok(!out.is_empty());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if out.len() + take > max {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&buf[..take]);
        reader.consume(take + done as usize);
        if done {
            return Ok(true);
        }
    }
}

fn write_response(w: &mut impl Write, r: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

fn serve_client(stream: UnixStream, jobs: &Sender<Job>, entry: &Entry) {
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::with_capacity(16 * 1024, read_half);
    let mut writer = stream;
    let mut line = Vec::new();
    loop {
        entry.set_idle(true);
        let read = read_line_bounded(&mut reader, &mut line, MAX_REQUEST_BYTES, REQUEST_TIMEOUT);
        entry.set_idle(false);
        match read {
            Ok(true) => {}
            Ok(false) => return,
            Err(ReadError::TooLarge) => {
                let err = ControlError::new(
                    ErrorCode::TooLarge,
                    format!("request longer than {MAX_REQUEST_BYTES} bytes; closing the connection"),
                );
                let _ = write_response(&mut writer, &Response::err(Value::Null, err));
                tracing::debug!("cut off a control client sending an oversized request");
                return;
            }
            Err(ReadError::Timeout) => {
                let err = ControlError::new(
                    ErrorCode::Timeout,
                    format!("no complete request within {} s; closing the connection", REQUEST_TIMEOUT.as_secs()),
                );
                let _ = write_response(&mut writer, &Response::err(Value::Null, err));
                return;
            }
            Err(ReadError::Io) => return,
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (id, cmd) = parse_request(&line);
        let subscribing = matches!(cmd, Ok(Command::Subscribe { .. }));
        if subscribing && !entry.take_subscriber_slot() {
            let err = ControlError::new(
                ErrorCode::Busy,
                format!("{MAX_SUBSCRIBERS} subscribers are connected; try again later"),
            );
            if write_response(&mut writer, &Response::err(id, err)).is_err() {
                return;
            }
            continue;
        }
        let answer = cmd.and_then(|cmd| dispatch(jobs, cmd));
        if subscribing && !matches!(answer, Ok(Answer::Events(_))) {
            entry.release_subscriber_slot();
        }
        let written = match answer {
            Ok(Answer::Value(v)) => write_response(&mut writer, &Response::ok(id, v)),
            Ok(Answer::Events(sub)) => {
                if write_response(&mut writer, &Response::ok(id.clone(), serde_json::json!({"subscribed": true})))
                    .is_ok()
                {
                    stream_events(&mut reader, &mut writer, &id, sub);
                }
                return;
            }
            Err(e) => write_response(&mut writer, &Response::err(id, e)),
        };
        if written.is_err() {
            return;
        }
    }
}

fn dispatch(jobs: &Sender<Job>, cmd: Command) -> Result<Answer, ControlError> {
    let bulk = matches!(cmd, Command::Flush { .. } | Command::Unoffload { filter: Some(_), .. });
    let wait = if bulk { BULK_ANSWER_TIMEOUT } else { ANSWER_TIMEOUT };
    let (tx, rx) = bounded(1);
    jobs.send_timeout(Job { cmd, reply: tx }, ANSWER_TIMEOUT).map_err(|e| match e {
        SendTimeoutError::Timeout(_) => ControlError::new(ErrorCode::Busy, "the daemon has too many requests waiting"),
        SendTimeoutError::Disconnected(_) => ControlError::new(ErrorCode::ShuttingDown, "the daemon is stopping"),
    })?;
    match rx.recv_timeout(wait) {
        Ok(answer) => answer,
        Err(RecvTimeoutError::Timeout) => {
            Err(ControlError::new(ErrorCode::Busy, format!("no answer within {} s", wait.as_secs())))
        }
        Err(RecvTimeoutError::Disconnected) => {
            Err(ControlError::new(ErrorCode::ShuttingDown, "the daemon is stopping"))
        }
    }
}

/// Writes event lines until the client leaves or the engine ends the
/// subscription; a client that went away is noticed within a second even
/// when no events come.
fn stream_events(reader: &mut BufReader<UnixStream>, writer: &mut UnixStream, id: &Value, sub: Subscription) {
    let prefix = format!(
        "{{\"v\":{VERSION},{}\"event\":",
        match id {
            Value::Null => String::new(),
            id => format!("\"id\":{id},"),
        }
    );
    let mut out = Vec::with_capacity(4096);
    loop {
        match sub.events.recv_timeout(Duration::from_secs(1)) {
            Ok(event) => {
                out.clear();
                let push = |out: &mut Vec<u8>, e: &str| {
                    out.extend_from_slice(prefix.as_bytes());
                    out.extend_from_slice(e.as_bytes());
                    out.extend_from_slice(b"}\n");
                };
                push(&mut out, &event);
                // Whatever else is queued goes out in the same write.
                while out.len() < 64 * 1024 {
                    match sub.events.try_recv() {
                        Ok(e) => push(&mut out, &e),
                        Err(_) => break,
                    }
                }
                if writer.write_all(&out).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if client_gone(reader) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                let err = if sub.lagged.load(Ordering::SeqCst) {
                    ControlError::new(
                        ErrorCode::Lagged,
                        format!("more than {SUBSCRIBER_QUEUE} events behind; subscription ended"),
                    )
                } else {
                    ControlError::new(ErrorCode::ShuttingDown, "the daemon is stopping")
                };
                let _ = write_response(writer, &Response::err(id.clone(), err));
                return;
            }
        }
    }
}

/// Whether the client closed its end (anything it sends is ignored).
fn client_gone(reader: &mut BufReader<UnixStream>) -> bool {
    let sock = reader.get_ref();
    if sock.set_nonblocking(true).is_err() {
        return true;
    }
    let mut buf = [0u8; 512];
    let gone = loop {
        match reader.get_mut().read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    let _ = reader.get_ref().set_nonblocking(false);
    gone
}
