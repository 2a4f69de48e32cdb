include!("build_libtorch.rs");

fn main() {
    link_libtorch();
    compile_optim();
}

/// `csrc/optim.cpp`, against the headers of the libtorch torch-sys links.
fn compile_optim() {
    println!("cargo:rerun-if-changed=csrc/optim.cpp");
    let lib = std::path::PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports its libtorch directory"),
    );
    let include = lib
        .parent()
        .expect("libtorch has a parent directory")
        .join("include");
    // The ABI torch-sys compiles its own wrapper with (PyTorch wheels since 2.7: the C++11 one).
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .file("csrc/optim.cpp")
        .include(include)
        .flag("-std=c++20")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .warnings(false)
        .compile("trainfleet_optim");
}
