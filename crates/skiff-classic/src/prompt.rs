//! The tutorial clients' input loop: `msg=input('>>: ').strip()`, skip empty
//! lines, leave on `quit`.

use std::io::{self, BufRead, Write};

/// Prompts with `>>: ` on `out` and hands each non-empty, stripped line to
/// `each`, until `quit`, end of input, or an error from `each`.
pub(crate) fn each_line(
    input: &mut impl BufRead,
    out: &mut impl Write,
    mut each: impl FnMut(&[u8], &mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        out.write_all(b">>: ")?;
        out.flush()?;
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            // Python's input() raises EOFError here; we just leave.
            out.write_all(b"\n")?;
            return Ok(());
        }
        let msg = line.trim_ascii();
        if msg.is_empty() {
            continue;
        }
        if msg == b"quit" {
            return Ok(());
        }
        each(msg, out)?;
        out.flush()?;
    }
}
