fn main() {
    eprintln!("patchbay-server: not implemented yet");
    std::process::exit(1);
}
