//! qemu-nbd's `--fork` and `--pid-file`.
//!
//! `--fork` forks before anything else happens (before any thread exists,
//! as fork requires): the child becomes the server, in a session of its
//! own with stdin and stdout on `/dev/null` (stderr stays, for its
//! errors); the parent waits until the child says its socket accepts
//! connections and exits 0, or exits with the child's failure if the child
//! dies first. A script can connect as soon as `costack-nbd --fork ...`
//! returns.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The child's end of the readiness pipe.
pub struct Ready(File);

impl Ready {
    /// Tells the waiting parent that the server accepts connections: it
    /// exits 0.
    pub fn done(mut self) {
        // The parent may be gone (killed): nothing to tell then.
        let _ = self.0.write_all(b"1");
    }
}

/// Forks: returns in the child (the server to be), with the end of the
/// pipe to report readiness on; the parent never returns (see the module
/// docs).
///
/// # Safety
/// The process must have one thread: fork copies only the caller's, and a
/// lock another thread held would stay locked in the child.
///
/// # Errors
/// When the pipe or the fork cannot be made.
pub unsafe fn fork_server() -> io::Result<Ready> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees a single thread, so the child's copy
    // of the process is consistent (no lock held by another thread).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(read);
            detach()?;
            Ok(Ready(File::from(write)))
        }
        child => {
            drop(write);
            std::process::exit(wait_for_child(File::from(read), child));
        }
    }
}

/// The parent: waits for the readiness byte (exit 0) or for the pipe to
/// close without it (the child failed: its exit status, at least 1).
fn wait_for_child(mut ready: File, child: libc::pid_t) -> i32 {
    let mut byte = [0u8; 1];
    loop {
        match ready.read(&mut byte) {
            Ok(1) => return 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => break,
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(child, &mut status, 0) };
    if r == child && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
        libc::WEXITSTATUS(status)
    } else {
        1
    }
}

/// The child: a session of its own (no terminal's signals), stdin and
/// stdout on /dev/null.
fn detach() -> io::Result<()> {
    // SAFETY: setsid only changes this process's session; it fails only
    // for a group leader, which a fresh child is not.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    let null = File::options().read(true).write(true).open("/dev/null")?;
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        // SAFETY: dup2 onto the standard descriptors, which this process
        // owns; `null` stays open for the call.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A pid file, written once the server listens and removed when it is
/// dropped (when the server exits normally).
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes this process's ID and a newline to `path`.
    ///
    /// # Errors
    /// When the file cannot be written (the message names it).
    pub fn write(path: &Path) -> io::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot write the pid file {}: {e}", path.display()),
            )
        })?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_holds_the_pid_until_dropped() {
        let path = std::env::temp_dir().join(format!("pidfile-{}", std::process::id()));
        let f = PidFile::write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        drop(f);
        assert!(!path.exists());
        let e = PidFile::write(Path::new("/nonexistent-dir/x.pid"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent-dir/x.pid"), "{e}");
    }
}
