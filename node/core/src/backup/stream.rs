//! Backing up a stream (`omesh backup --stdin`, `--stdin-from-command`):
//! the bytes a program writes, stored as one file of the snapshot.
//!
//! A stream has no size, no holes and cannot be read twice, so it is
//! chunked as it arrives. Its producer decides whether the snapshot is
//! saved: [`StreamSource::finish`] is asked once the stream has ended, and
//! an error there (a dump command that exited non-zero, a CLI that
//! signalled failure) fails the backup before any snapshot record is
//! written.
//!
//! Through the daemon, the CLI sends the stream over a FIFO in framed form
//! ([`write_framed`] / [`FramedReader`]): data frames, then a trailer with
//! the producer's verdict. A stream that ends without a trailer (the CLI was
//! killed) or with a failing one saves nothing; a FIFO with no data for
//! [`STREAM_IDLE`] is given up.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest data frame on a framed stream.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Longest failure message in a trailer.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// How long a framed stream may go without a byte before the backup gives
/// up on it (a producer that is stuck, or a CLI that never connected).
pub const STREAM_IDLE: Duration = Duration::from_secs(600);

/// A stream of bytes to back up, and its producer's verdict.
pub trait StreamSource: Read + Send {
    /// Called once the stream has ended: `Ok` when its producer succeeded.
    fn finish(&mut self) -> Result<(), String>;
}

/// A stream whose end is its success (the CLI's own stdin).
pub struct PlainStream<R>(pub R);

impl<R: Read> Read for PlainStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + Send> StreamSource for PlainStream<R> {
    fn finish(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// The standard output of a command; the command's exit status is the
/// verdict. Its standard error goes where this process's goes. The command
/// starts at the first read, that is once the backup has begun (after its
/// pre hook), never before.
pub struct CommandStream {
    argv: Vec<std::ffi::OsString>,
    shown: String,
    running: Option<(std::process::Child, std::process::ChildStdout)>,
}

impl CommandStream {
    /// The command `argv` (program and arguments, no shell), not started
    /// yet; a program that cannot be found is refused now.
    pub fn new(argv: &[std::ffi::OsString]) -> Result<Self, String> {
        let shown = argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        let Some(program) = argv.first() else {
            return Err("--stdin-from-command needs a command after `--`".into());
        };
        if !runnable(Path::new(program)) {
            return Err(format!(
                "cannot start `{shown}`: {} is not an executable file (nor one found on PATH)",
                program.to_string_lossy()
            ));
        }
        Ok(CommandStream { argv: argv.to_vec(), shown, running: None })
    }

    fn stdout(&mut self) -> io::Result<&mut std::process::ChildStdout> {
        if self.running.is_none() {
            let mut child = std::process::Command::new(&self.argv[0])
                .args(&self.argv[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("cannot start `{}`: {e}", self.shown)))?;
            let stdout = child.stdout.take().expect("piped");
            self.running = Some((child, stdout));
        }
        Ok(&mut self.running.as_mut().expect("started").1)
    }
}

/// Whether `program` names an executable file: as a path when it has a
/// `/`, else in a directory of PATH (as the command would be run).
fn runnable(program: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.components().count() > 1 {
        return exec(program);
    }
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| exec(&d.join(program))))
}

impl Read for CommandStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stdout()?.read(buf)
    }
}

impl StreamSource for CommandStream {
    fn finish(&mut self) -> Result<(), String> {
        let Some((child, _)) = self.running.as_mut() else {
            return Err(format!("`{}` was never started", self.shown));
        };
        let status = child.wait().map_err(|e| format!("waiting for `{}`: {e}", self.shown))?;
        if status.success() { Ok(()) } else { Err(format!("`{}` failed ({status})", self.shown)) }
    }
}

impl Drop for CommandStream {
    fn drop(&mut self) {
        // a backup that failed before the end: do not leave the command
        // running (or a zombie) behind
        if let Some((child, _)) = self.running.as_mut()
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A stream to back up as the file `name` at the snapshot's root.
#[derive(Clone)]
pub struct StreamInput {
    /// File name in the snapshot (one path component).
    pub name: String,
    source: Arc<Mutex<Option<Box<dyn StreamSource>>>>,
}

impl std::fmt::Debug for StreamInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamInput({:?})", self.name)
    }
}

impl StreamInput {
    /// A stream stored as `name`; the name must be a valid file name.
    pub fn new(name: &str, source: Box<dyn StreamSource>) -> Result<Self, String> {
        crate::snapshot::validate_name(name.as_bytes()).map_err(|e| format!("--stdin-filename {name:?}: {e}"))?;
        Ok(StreamInput { name: name.to_string(), source: Arc::new(Mutex::new(Some(source))) })
    }

    /// The path the stream has in the snapshot (and in its record's paths).
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// The stream, once (a stream cannot be read twice).
    pub(super) fn take(&self) -> Option<Box<dyn StreamSource>> {
        self.source.lock().ok()?.take()
    }
}

/// Copy `from` to `to` as frames, then the trailer with `from`'s verdict
/// ([`StreamSource::finish`], asked after it ended). A read error of `from` is sent as a
/// failing trailer too, so the receiver never saves a partial stream.
pub fn write_framed<W: Write>(from: &mut dyn StreamSource, to: &mut W) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let outcome = loop {
        match from.read(&mut buf) {
            Ok(0) => break from.finish(),
            Ok(n) => {
                to.write_all(&(n as u32).to_le_bytes())?;
                to.write_all(&buf[..n])?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(format!("reading the stream: {e}")),
        }
    };
    to.write_all(&0u32.to_le_bytes())?;
    match outcome {
        Ok(()) => to.write_all(&[0])?,
        Err(m) => {
            let m = &m.as_bytes()[..m.len().min(MAX_MESSAGE_BYTES)];
            to.write_all(&[1])?;
            to.write_all(&(m.len() as u32).to_le_bytes())?;
            to.write_all(m)?;
        }
    }
    to.flush()?;
    Ok(total)
}

/// Reads a framed stream ([`write_framed`]); its verdict is the trailer's.
pub struct FramedReader<R> {
    inner: R,
    left: usize,
    verdict: Option<Result<(), String>>,
}

impl<R: Read> FramedReader<R> {
    /// Frames from `inner`.
    pub fn new(inner: R) -> Self {
        FramedReader { inner, left: 0, verdict: None }
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.inner.read_exact(&mut b).map_err(|e| ended(e, "a frame header"))?;
        Ok(u32::from_le_bytes(b))
    }
}

fn ended(e: io::Error, what: &str) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the stream ended inside {what}, without its end marker (the sender stopped or was killed)"),
        )
    } else {
        e
    }
}

impl<R: Read> Read for FramedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.verdict.is_some() || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let len = self.u32()? as usize;
            if len == 0 {
                let mut s = [0u8; 1];
                self.inner.read_exact(&mut s).map_err(|e| ended(e, "the end marker"))?;
                self.verdict = Some(match s[0] {
                    0 => Ok(()),
                    1 => {
                        let n = self.u32()? as usize;
                        if n > MAX_MESSAGE_BYTES {
                            return Err(io::Error::other("the stream's failure message is above its limit"));
                        }
                        let mut m = vec![0u8; n];
                        self.inner.read_exact(&mut m).map_err(|e| ended(e, "the end marker"))?;
                        Err(String::from_utf8_lossy(&m).into_owned())
                    }
                    b => return Err(io::Error::other(format!("unknown stream end marker {b}"))),
                });
                return Ok(0);
            }
            if len > MAX_FRAME_BYTES {
                return Err(io::Error::other(format!("a stream frame of {len} bytes is above the limit")));
            }
            self.left = len;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(ended(io::ErrorKind::UnexpectedEof.into(), "a frame"));
        }
        self.left -= n;
        Ok(n)
    }
}

impl<R: Read + Send> StreamSource for FramedReader<R> {
    fn finish(&mut self) -> Result<(), String> {
        match self.verdict.take() {
            Some(v) => v,
            None => Err("the stream ended without its end marker".into()),
        }
    }
}

/// The read end of a FIFO, opened without waiting for a writer; each read
/// waits at most `idle` for data.
pub struct Fifo {
    file: std::fs::File,
    idle: Duration,
}

impl Fifo {
    /// Open `path`, which must be a FIFO.
    pub fn open(path: &Path, idle: Duration) -> io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        if !file.metadata()?.file_type().is_fifo() {
            return Err(io::Error::other(format!("{} is not a FIFO", path.display())));
        }
        Ok(Fifo { file, idle })
    }
}

impl Read for Fifo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut p = libc::pollfd { fd: self.file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = self.idle.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call
            let r = unsafe { libc::poll(&mut p, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data on the stream for {}s", self.idle.as_secs()),
                ));
            }
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Given<'a>(&'a [u8], Option<Result<(), String>>);
    impl Read for Given<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl StreamSource for Given<'_> {
        fn finish(&mut self) -> Result<(), String> {
            self.1.take().expect("asked once")
        }
    }

    fn framed(data: &[u8], verdict: Result<(), String>) -> Vec<u8> {
        let mut out = Vec::new();
        write_framed(&mut Given(data, Some(verdict)), &mut out).unwrap();
        out
    }

    #[test]
    fn a_framed_stream_carries_its_bytes_and_its_verdict() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let f = framed(&data, Ok(()));
        let mut r = FramedReader::new(&f[..]);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(r.finish(), Ok(()));
        let f = framed(b"partial", Err("pg_dump failed (exit status: 1)".into()));
        let mut r = FramedReader::new(&f[..]);
        r.read_to_end(&mut Vec::new()).unwrap();
        assert_eq!(r.finish(), Err("pg_dump failed (exit status: 1)".into()));
    }

    #[test]
    fn a_stream_cut_short_or_oversized_is_an_error() {
        let whole = framed(b"some bytes", Ok(()));
        for cut in [3, 8, whole.len() - 1] {
            let mut r = FramedReader::new(&whole[..cut]);
            let e = r.read_to_end(&mut Vec::new()).unwrap_err();
            assert!(e.to_string().contains("without its end marker"), "{cut}: {e}");
        }
        let mut huge = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes().to_vec();
        huge.extend([0; 16]);
        assert!(FramedReader::new(&huge[..]).read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn a_failing_command_is_the_streams_verdict() {
        let argv: Vec<std::ffi::OsString> = ["sh", "-c", "echo partial; exit 3"].iter().map(Into::into).collect();
        let mut c = CommandStream::new(&argv).unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"partial\n");
        let e = c.finish().unwrap_err();
        assert!(e.contains("`sh -c echo partial; exit 3` failed") && e.contains('3'), "{e}");
        assert!(StreamInput::new("a/b", Box::new(PlainStream(&b""[..]))).is_err());
        let missing: Vec<std::ffi::OsString> = vec!["/nonexistent/pg_dump".into()];
        assert!(CommandStream::new(&missing).err().unwrap().contains("/nonexistent/pg_dump"));
    }
}
