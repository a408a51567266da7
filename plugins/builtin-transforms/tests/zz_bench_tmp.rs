use ssl_builtin_transforms::*;
use ssl_plugin_api::{Image, Params, Transform};
#[test]
fn bench() {
    let p = |s: &str| Params::from_json(s).unwrap();
    let ts: Vec<Box<dyn Transform>> = vec![
        Box::new(RandomResizedCrop::from_params(&p(r#"{"size":32}"#)).unwrap()),
        Box::new(RandomHorizontalFlip::from_params(&p("{}")).unwrap()),
        Box::new(ColorJitter::from_params(&p(r#"{"brightness":0.8,"contrast":0.8,"saturation":0.8,"hue":0.2,"p":0.8}"#)).unwrap()),
        Box::new(RandomGrayscale::from_params(&p(r#"{"p":0.2}"#)).unwrap()),
        Box::new(GaussianBlur::from_params(&p(r#"{"p":0.5}"#)).unwrap()),
    ];
    let img = Image::from_u8(32, 32, 3, (0..3072).map(|i| (i % 251) as u8).collect()).unwrap();
    let t0 = std::time::Instant::now();
    for s in 0..20000u64 { let mut x = img.clone(); for (k, t) in ts.iter().enumerate() { x = t.apply(x, s * 8 + k as u64).unwrap(); } }
    eprintln!("cifar pipeline: {:.2} us/sample", t0.elapsed().as_secs_f64() / 20000.0 * 1e6);
    let big = Image::from_u8(512, 512, 3, (0..512*512*3).map(|i| (i % 251) as u8).collect()).unwrap();
    let rrc = RandomResizedCrop::from_params(&p(r#"{"size":256}"#)).unwrap();
    let cj = ColorJitter::from_params(&p(r#"{"brightness":0.8,"contrast":0.8,"saturation":0.8,"hue":0.2}"#)).unwrap();
    let t0 = std::time::Instant::now();
    for s in 0..200u64 { let x = rrc.apply(big.clone(), s).unwrap(); cj.apply(x, s).unwrap(); }
    eprintln!("512->256 rrc+jitter: {:.2} ms/sample", t0.elapsed().as_secs_f64() / 200.0 * 1e3);
}
