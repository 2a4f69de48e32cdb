include!("build_libtorch.rs");

fn main() {
    link_libtorch();
}
