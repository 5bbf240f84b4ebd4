//! `waypost-bench`: load generator and benchmarks (see BENCHMARKS.md).

fn main() {
    eprintln!("waypost-bench: no subcommands yet");
    std::process::exit(2);
}
