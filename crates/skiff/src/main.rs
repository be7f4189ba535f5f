//! The `skiff` command: see `skiff --help`.

fn main() {
    std::process::exit(skiff::cli::main());
}
