//! A file that one side appends to while the other reads it: the upload is parsed while it is
//! still arriving, so an upload over a slow link is done moments after its last byte.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    /// Bytes of the file that are written and may be read.
    written: u64,
    /// Set once no more bytes will come: `Ok` for a complete file, `Err` with why it stopped.
    end: Option<Result<(), String>>,
}

/// The writer's and readers' shared view of a file being received.
#[derive(Debug, Default)]
pub struct Growing {
    state: Mutex<State>,
    changed: Condvar,
}

impl Growing {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        self.changed.notify_all();
    }

    /// `bytes` more are on disk.
    pub fn advance(&self, bytes: u64) {
        self.update(|s| s.written += bytes);
    }

    /// The file is complete.
    pub fn finish(&self) {
        self.update(|s| s.end = Some(Ok(())));
    }

    /// No more bytes will come, and what came must not be used (readers get an error).
    pub fn abort(&self, why: &str) {
        self.update(|s| {
            if s.end.is_none() {
                s.end = Some(Err(why.to_string()));
            }
        });
    }

    /// Waits until the file is complete (or was abandoned).
    pub fn wait_complete(&self) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &state.end {
                Some(Ok(())) => return Ok(()),
                Some(Err(why)) => return Err(std::io::Error::other(why.clone())),
                None => state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// A reader from the start of `path` that waits for bytes not yet written.
    pub fn reader(self: &Arc<Self>, path: &Path) -> std::io::Result<GrowingReader> {
        Ok(GrowingReader {
            file: File::open(path)?,
            position: 0,
            growing: Arc::clone(self),
        })
    }
}

/// Reads a [`Growing`] file, blocking at the written end until more comes or the file ends.
#[derive(Debug)]
pub struct GrowingReader {
    file: File,
    position: u64,
    growing: Arc<Growing>,
}

impl Read for GrowingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = {
            let mut state = self.growing.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(Err(why)) = &state.end {
                    return Err(std::io::Error::other(why.clone()));
                }
                if state.written > self.position {
                    break state.written - self.position;
                }
                if state.end.is_some() {
                    return Ok(0);
                }
                state = self
                    .growing
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
        };
        let want = buf
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        // The descriptor's offset is ours alone, but be exact after a short read.
        self.file.seek(SeekFrom::Start(self.position))?;
        let read = self.file.read(&mut buf[..want])?;
        self.position += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_reader_follows_the_writer_and_sees_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        let growing = Growing::new();
        let mut reader = growing.reader(&path).unwrap();
        let reading = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all)
        });
        for piece in [&b"hello "[..], b"growing ", b"file"] {
            std::thread::sleep(Duration::from_millis(5));
            file.write_all(piece).unwrap();
            growing.advance(piece.len() as u64);
        }
        growing.finish();
        assert_eq!(reading.join().unwrap().unwrap(), b"hello growing file");
    }

    #[test]
    fn an_aborted_file_is_an_error_to_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        let growing = Growing::new();
        let mut reader = growing.reader(&path).unwrap();
        let reading = std::thread::spawn(move || reader.read(&mut [0; 8]));
        growing.abort("client went away");
        assert!(reading.join().unwrap().is_err());
        assert!(growing.wait_complete().is_err());
    }
}
