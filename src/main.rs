fn main() {
    let dir = std::env::args().nth(1).expect("dir");
    let g = dicomfs::synth::generate(std::path::Path::new(&dir), &dicomfs::synth::Spec::default())
        .unwrap();
    println!("{} instances", g.instances);
}
