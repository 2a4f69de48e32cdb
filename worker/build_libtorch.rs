// Shared by the build scripts of every package whose binaries link libtorch (the worker and the
// `trainfleet` CLI), through `include!`. torch-sys reports where libtorch's shared libraries are
// (`DEP_TCH_LIBTORCH_LIB`, visible to packages that depend on torch-sys directly); from that we:
//
// 1. put that directory on the binaries' rpath, so they run without LD_LIBRARY_PATH;
// 2. force `libtorch_cuda` into DT_NEEDED when the libtorch build has it. torch-sys asks for it,
//    but nothing references its symbols, so `--as-needed` (the default on Debian/Ubuntu) drops
//    it and CUDA is then silently unavailable on GPU hosts;
// 3. record the libtorch version for workers to report.

fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch directory; set LD_LIBRARY_PATH at run time");
        println!("cargo:rustc-env=TRAINFLEET_LIBTORCH_VERSION=");
        return;
    };
    let lib = std::path::PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    // A PyTorch wheel has torch/version.py next to torch/lib; a libtorch zip has build-version.
    let root = lib.parent().unwrap_or(&lib);
    let version = std::fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_owned())
        })
        .or_else(|| std::fs::read_to_string(root.join("build-version")).ok())
        .unwrap_or_default();
    println!("cargo:rustc-env=TRAINFLEET_LIBTORCH_VERSION={}", version.trim());
}
