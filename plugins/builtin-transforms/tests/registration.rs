//! The plugin registers every transform and they work through the plugin ABI.

use ssl_plugin_api::{host, Image, Params};

#[test]
fn builtin_plugin_offers_every_transform() {
    ssl_builtin_transforms::link();
    let plugins = host::builtin_plugins().unwrap();
    let plugin = plugins
        .iter()
        .find(|p| p.name == "builtin-transforms")
        .expect("builtin-transforms is registered");
    let names: Vec<&str> = plugin.transforms.iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        [
            "RandomResizedCrop",
            "RandomHorizontalFlip",
            "ColorJitter",
            "RandomGrayscale",
            "GaussianBlur",
            "Resize",
            "CenterCrop",
            "ToFloat",
            "ExpandChannels",
            "RandomAffine",
            "RandomGamma",
            "ElasticTransform",
            "RandomErasing",
            "AddGaussianNoise"
        ]
    );
    for t in &plugin.transforms {
        assert!(!t.description().is_empty());
    }
    let find = |name: &str| plugin.transforms.iter().find(|t| t.name() == name).unwrap();

    // Through the ABI: create from JSON, apply, same seed same output.
    let rrc = find("RandomResizedCrop")
        .create(&Params::from_json(r#"{"size": 32}"#).unwrap())
        .unwrap();
    let img = Image::from_u8(40, 30, 3, (0..3600).map(|i| (i % 251) as u8).collect()).unwrap();
    let a = rrc.apply(img.clone(), 5).unwrap();
    assert_eq!((a.width(), a.height(), a.channels()), (32, 32, 3));
    assert_eq!(a, rrc.apply(img, 5).unwrap());

    // Factory errors name the transform and the parameter.
    let err = find("GaussianBlur")
        .create(&Params::from_json(r#"{"kernel": 3}"#).unwrap())
        .err()
        .expect("unknown parameter is refused");
    assert!(err.message().contains("`kernel`"), "{err}");
}
