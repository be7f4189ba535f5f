//! The `--delete`s a receiver holds until everything else has succeeded.
//! The first [`IN_MEMORY`] are kept in memory; the rest go, in order, to
//! an anonymous temporary file (unlinked from the start, so nothing is
//! left behind whatever happens), so a sync that deletes a million paths
//! does not hold a million names.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

/// Deletes held in memory before the rest are spilled to disk.
pub const IN_MEMORY: usize = 4096;

/// Deletes in the order they arrived: (path, is a directory).
#[derive(Default)]
pub struct Deferred {
    mem: Vec<(String, bool)>,
    spill: Option<BufWriter<File>>,
    count: u64,
}

impl Deferred {
    /// Adds one delete.
    pub fn push(&mut self, path: String, dir: bool) -> io::Result<()> {
        self.count += 1;
        if self.mem.len() < IN_MEMORY && self.spill.is_none() {
            self.mem.push((path, dir));
            return Ok(());
        }
        let w = match &mut self.spill {
            Some(w) => w,
            None => self.spill.insert(BufWriter::new(tempfile::tempfile()?)),
        };
        let len = u32::try_from(path.len()).map_err(io::Error::other)?;
        w.write_all(&[u8::from(dir)])?;
        w.write_all(&len.to_be_bytes())?;
        w.write_all(path.as_bytes())
    }

    /// How many deletes are held.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every delete, in order.
    pub fn into_ordered(self) -> io::Result<impl Iterator<Item = io::Result<(String, bool)>>> {
        let spilled = match self.spill {
            None => None,
            Some(w) => {
                let mut f = w.into_inner().map_err(|e| e.into_error())?;
                f.rewind()?;
                Some(BufReader::new(f))
            }
        };
        let mut spilled = spilled;
        let rest = std::iter::from_fn(move || {
            let r = spilled.as_mut()?;
            let mut head = [0u8; 5];
            match r.read_exact(&mut head) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return None,
                Err(e) => return Some(Err(e)),
                Ok(()) => {}
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut path = vec![0u8; len];
            Some(
                r.read_exact(&mut path)
                    .and_then(|()| String::from_utf8(path).map_err(io::Error::other))
                    .map(|p| (p, head[0] == 1)),
            )
        });
        Ok(self.mem.into_iter().map(Ok).chain(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_deletes_come_back_in_order() {
        let mut d = Deferred::default();
        let n = IN_MEMORY + 1000;
        for i in 0..n {
            d.push(format!("dir/f{i}\nodd"), i % 3 == 0).unwrap();
        }
        assert_eq!(d.len(), n as u64);
        let back: Vec<_> = d.into_ordered().unwrap().map(Result::unwrap).collect();
        assert_eq!(back.len(), n);
        for (i, (p, dir)) in back.into_iter().enumerate() {
            assert_eq!(p, format!("dir/f{i}\nodd"));
            assert_eq!(dir, i % 3 == 0);
        }
        assert_eq!(Deferred::default().into_ordered().unwrap().count(), 0);
    }
}
