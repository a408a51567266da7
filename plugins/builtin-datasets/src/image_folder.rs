//! A user's own images: `ImageFolder` (labelled, one folder per class, as torchvision's
//! `ImageFolder`) and `ImageFolderUnlabelled` (every image under a folder).
//!
//! `ImageFolder`: `root/<class>/…/<image>`; the classes are the sub-folders of root sorted
//! by name, a class's label is its position. Images are PNG, JPEG, TIFF, BMP, WebP or DICOM
//! (`.png`, `.jpg`, `.jpeg`, `.tif`, `.tiff`, `.bmp`, `.webp`, `.dcm`, any case), found recursively; other files, files directly in root, and
//! hidden files and folders (names starting with `.`) are ignored. A class folder without
//! images is an error, as torchvision's. `ImageFolderUnlabelled`: every image under root,
//! recursively. In both, images are ordered as torchvision's (folders by path, then files by
//! name), the id of a sample is its path relative to root (`/`-separated), images are RGB
//! (grey files as three equal channels, alpha dropped, as torchvision's loader) and are
//! decoded in `get`. Split `train` is the
//! folder; split `test` is empty.

use crate::csv_table::{check_params, root_param, split_param};
use crate::image_file::{decode_native, has_image_extension, ImageLimits, MAX_IMAGE_PIXELS};
use crate::split::Split;
use ssl_plugin_api::{bail, Dataset, Image, Params, Pixels, Plugin, PluginError, Result, Sample};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Images in class folders (labelled) or anywhere under a folder (unlabelled).
#[derive(Debug)]
pub struct ImageFolder {
    name: &'static str,
    root: PathBuf,
    /// Paths relative to root, `/`-separated.
    ids: Vec<String>,
    /// Class index of each image; `None` when unlabelled.
    labels: Option<Vec<i64>>,
    classes: Vec<String>,
    /// What one image file may claim (`max_image_pixels`).
    limits: ImageLimits,
}

impl ImageFolder {
    /// `ImageFolder` from its parameters (`root`, `split`).
    pub fn labelled(params: &Params) -> Result<Self> {
        const NAME: &str = "ImageFolder";
        check_params(params, NAME, &[MAX_IMAGE_PIXELS])?;
        let limits = ImageLimits::from_params(params, NAME)?;
        let root = root_param(params, NAME)?;
        let split = split_param(params)?;
        check_root(&root, NAME)?;
        let mut classes = Vec::new();
        for entry in list_dir(&root)? {
            if entry.is_dir {
                classes.push(entry.name);
            }
        }
        classes.sort();
        if classes.is_empty() {
            bail!(
                "{NAME}: {} holds no class folders; expected root/<class>/<image> \
                 (PNG, JPEG or DICOM)",
                root.display()
            );
        }
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let before = ids.len();
            // Folders seen are tracked per class (against link cycles): a class folder that
            // links into another class lists its images too, as torchvision's walk does.
            ids.extend(walk_images(&root, class, &mut HashSet::new())?);
            if ids.len() == before {
                bail!(
                    "{NAME}: class folder {} holds no images (.png, .jpg, .jpeg, .dcm)",
                    root.join(class).display()
                );
            }
            labels.resize(ids.len(), label as i64);
        }
        let mut dataset = ImageFolder {
            name: NAME,
            root,
            ids,
            labels: Some(labels),
            classes,
            limits,
        };
        dataset.apply_split(split);
        Ok(dataset)
    }

    /// `ImageFolderUnlabelled` from its parameters (`root`, `split`).
    pub fn unlabelled(params: &Params) -> Result<Self> {
        const NAME: &str = "ImageFolderUnlabelled";
        check_params(params, NAME, &[MAX_IMAGE_PIXELS])?;
        let limits = ImageLimits::from_params(params, NAME)?;
        let root = root_param(params, NAME)?;
        let split = split_param(params)?;
        check_root(&root, NAME)?;
        let ids = walk_images(&root, "", &mut HashSet::new())?;
        if ids.is_empty() {
            bail!(
                "{NAME}: no images (.png, .jpg, .jpeg, .dcm) under {}",
                root.display()
            );
        }
        let mut dataset = ImageFolder {
            name: NAME,
            root,
            ids,
            labels: None,
            classes: Vec::new(),
            limits,
        };
        dataset.apply_split(split);
        Ok(dataset)
    }

    fn apply_split(&mut self, split: Split) {
        if split == Split::Test {
            self.ids.clear();
            if let Some(labels) = &mut self.labels {
                labels.clear();
            }
        }
    }

    /// The class names, sorted (label `i` is `classes()[i]`); empty when unlabelled.
    #[allow(dead_code)] // API for the host, which reaches datasets through the ABI only for now
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
}

fn check_root(root: &Path, name: &str) -> Result<()> {
    if !root.is_dir() {
        bail!("{name}: dataset folder {} not found", root.display());
    }
    Ok(())
}

struct DirEntry {
    name: String,
    is_dir: bool,
}

/// The non-hidden files and folders directly in `dir` (symbolic links followed).
fn list_dir(dir: &Path) -> Result<Vec<DirEntry>> {
    let error = |e: std::io::Error| {
        PluginError::msg(format!("{}: cannot list the folder: {e}", dir.display()))
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(error)? {
        let entry = entry.map_err(error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        out.push(DirEntry {
            is_dir: path.is_dir(),
            name,
        });
    }
    Ok(out)
}

/// The images under `root/relative` (`relative` empty for root itself), as `/`-separated
/// paths relative to root, in the order of torchvision's `sorted(os.walk(...))`: folders by
/// path, files within each by name. `visited` guards against symbolic-link loops.
fn walk_images(root: &Path, relative: &str, visited: &mut HashSet<PathBuf>) -> Result<Vec<String>> {
    let mut folders: Vec<(String, Vec<String>)> = Vec::new();
    let mut pending = vec![relative.to_string()];
    while let Some(rel) = pending.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        if let Ok(canonical) = dir.canonicalize() {
            if !visited.insert(canonical) {
                continue;
            }
        }
        let mut files = Vec::new();
        for entry in list_dir(&dir)? {
            let child = if rel.is_empty() {
                entry.name.clone()
            } else {
                format!("{rel}/{}", entry.name)
            };
            if entry.is_dir {
                pending.push(child);
            } else if has_image_extension(Path::new(&entry.name)) {
                files.push(entry.name);
            }
        }
        files.sort();
        folders.push((rel, files));
    }
    folders.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(folders
        .into_iter()
        .flat_map(|(rel, files)| {
            files.into_iter().map(move |f| {
                if rel.is_empty() {
                    f
                } else {
                    format!("{rel}/{f}")
                }
            })
        })
        .collect())
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn num_classes(&self) -> Option<usize> {
        self.labels.as_ref().map(|_| self.classes.len())
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let Some(id) = self.ids.get(index) else {
            bail!(
                "{}: index {index} out of range ({} images)",
                self.name,
                self.len()
            );
        };
        let image = to_rgb(decode_native(&self.root.join(id), self.limits)?)?;
        let label = self.labels.as_ref().map(|l| l[index]);
        Ok(Sample::new(image, label, id.clone()))
    }

    fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok(match &self.labels {
            Some(labels) => labels.iter().map(|&l| Some(l)).collect(),
            None => vec![None; self.ids.len()],
        })
    }
}

/// Grey images as three identical channels, as torchvision's `ImageFolder` loader
/// (`convert("RGB")`), so a folder mixing grey and colour files makes one kind of batch.
fn to_rgb(image: Image) -> Result<Image> {
    if image.channels() != 1 {
        return Ok(image);
    }
    let (w, h) = (image.width(), image.height());
    match image.pixels() {
        Pixels::U8(v) => Image::from_u8(w, h, 3, v.iter().flat_map(|&g| [g; 3]).collect()),
        Pixels::U16(v) => Image::from_u16(w, h, 3, v.iter().flat_map(|&g| [g; 3]).collect()),
        Pixels::F32(v) => Image::from_f32(w, h, 3, v.iter().flat_map(|&g| [g; 3]).collect()),
    }
}

/// Adds this file's datasets to the plugin.
pub(crate) fn register(plugin: Plugin) -> Plugin {
    plugin
        .dataset(
            "ImageFolder",
            "your own labelled images: root/<class>/<image> (PNG, JPEG, TIFF, BMP, WebP, DICOM; searched \
             recursively; hidden and other files ignored), classes = sub-folders sorted by name, \
             RGB (grey repeated); split train = all, test = empty; max_image_pixels (67108864): larger images are refused",
            ImageFolder::labelled,
        )
        .dataset(
            "ImageFolderUnlabelled",
            "your own unlabelled images: every PNG, JPEG, TIFF, BMP, WebP or DICOM under root (recursively, \
             sorted), RGB (grey repeated); split train = all, test = empty; max_image_pixels (67108864): larger images are refused",
            ImageFolder::unlabelled,
        )
}

#[cfg(all(test, feature = "testdata"))]
mod tests {
    use super::*;
    use crate::testdata::cxr::{rgb_pattern, write_image_folder, write_png_gray8};
    use ssl_plugin_api::Pixels;

    fn params(root: &Path, split: &str) -> Params {
        Params::from_json(&format!(
            r#"{{"root": {:?}, "split": "{split}"}}"#,
            root.display().to_string()
        ))
        .unwrap()
    }

    #[test]
    fn classes_from_sorted_folders() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_image_folder(dir.path(), &["cat", "dog"], 3, 8).unwrap();
        // A nested folder with a grey image and a DICOM (any case) in the second class.
        write_png_gray8(
            &dir.path().join("dog/sub/a.png"),
            4,
            2,
            &[1, 2, 3, 4, 5, 6, 7, 8],
        )
        .unwrap();
        let dicom = crate::testdata::dicom::DicomSpec::gray8(2, 1, vec![10, 20]);
        crate::testdata::dicom::write_dicom(&dir.path().join("dog/sub/b.DCM"), &dicom).unwrap();
        let ds = ImageFolder::labelled(&params(dir.path(), "train")).unwrap();
        assert_eq!(ds.classes(), ["cat", "dog"]);
        assert_eq!(ds.num_classes(), Some(2));
        let mut expected = written.clone();
        expected.extend(["dog/sub/a.png".to_string(), "dog/sub/b.DCM".to_string()]);
        assert_eq!(ds.ids, expected);
        assert_eq!(
            ds.targets().unwrap(),
            [0, 0, 0, 1, 1, 1, 1, 1].map(Some).to_vec()
        );
        let sample = ds.get(3).unwrap();
        assert_eq!((sample.id(), sample.label()), ("dog/img0.png", Some(1)));
        let image = sample.image();
        assert_eq!((image.width(), image.height(), image.channels()), (8, 8, 3));
        let Pixels::U8(px) = image.pixels() else {
            panic!("8-bit expected")
        };
        assert_eq!(px, rgb_pattern(1000, 8, 8).as_slice());
        let jpeg = ds.get(1).unwrap();
        assert_eq!((jpeg.id(), jpeg.image().channels()), ("cat/img1.jpg", 3));
        let grey = ds.get(6).unwrap();
        assert_eq!((grey.image().channels(), grey.image().width()), (3, 4));
        let dcm = ds.get(7).unwrap();
        let Pixels::U8(px) = dcm.image().pixels() else {
            panic!("8-bit expected")
        };
        assert_eq!(
            (dcm.id(), dcm.label(), px),
            ("dog/sub/b.DCM", Some(1), &[0u8, 0, 0, 255, 255, 255][..])
        );
        assert_eq!(
            ImageFolder::labelled(&params(dir.path(), "test"))
                .unwrap()
                .len(),
            0
        );

        let all = ImageFolder::unlabelled(&params(dir.path(), "train")).unwrap();
        assert_eq!(all.ids, expected);
        assert_eq!(all.num_classes(), None);
        assert_eq!(all.targets().unwrap(), vec![None; 8]);
        assert_eq!(all.get(0).unwrap().label(), None);
    }

    /// TIFF (8 and 16 bit), BMP and WebP files are listed and decoded like PNGs: RGB, grey
    /// repeated, 16-bit grey kept as 16-bit values.
    #[test]
    fn tiff_bmp_and_webp_files_are_images() {
        use image::{ExtendedColorType, ImageFormat};
        let dir = tempfile::tempdir().unwrap();
        let rgb = rgb_pattern(3, 4, 2);
        let grey: Vec<u8> = (0..8).map(|i| i * 30).collect();
        let grey16: Vec<u8> = (0..8u16).flat_map(|i| (i * 1000).to_ne_bytes()).collect();
        let save = |name: &str, data: &[u8], color, format| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            image::save_buffer_with_format(&path, data, 4, 2, color, format).unwrap();
        };
        save(
            "a/rgb.TIFF",
            &rgb,
            ExtendedColorType::Rgb8,
            ImageFormat::Tiff,
        );
        save(
            "a/grey16.tif",
            &grey16,
            ExtendedColorType::L16,
            ImageFormat::Tiff,
        );
        save("b/grey.bmp", &grey, ExtendedColorType::L8, ImageFormat::Bmp);
        save(
            "b/rgb.webp",
            &rgb,
            ExtendedColorType::Rgb8,
            ImageFormat::WebP,
        );
        let ds = ImageFolder::labelled(&params(dir.path(), "train")).unwrap();
        assert_eq!(
            ds.ids,
            ["a/grey16.tif", "a/rgb.TIFF", "b/grey.bmp", "b/rgb.webp"]
        );
        let u8s = |i: usize| match ds.get(i).unwrap().image().pixels() {
            Pixels::U8(px) => px.to_vec(),
            _ => panic!("{}: 8-bit expected", ds.ids[i]),
        };
        let sample = ds.get(0).unwrap();
        let Pixels::U16(g16) = sample.image().pixels() else {
            panic!("16-bit expected")
        };
        assert_eq!(g16[..6], [0, 0, 0, 1000, 1000, 1000]);
        assert_eq!(u8s(1), rgb);
        assert_eq!(u8s(3), rgb);
        let px = u8s(2);
        assert_eq!(px, grey.iter().flat_map(|&g| [g; 3]).collect::<Vec<u8>>());
    }

    #[test]
    fn a_class_folder_linking_into_another_class_lists_its_images_too() {
        let dir = tempfile::tempdir().unwrap();
        write_png_gray8(&dir.path().join("a/own.png"), 1, 1, &[0]).unwrap();
        write_png_gray8(&dir.path().join("b/x.png"), 1, 1, &[0]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("b"), dir.path().join("a/linked")).unwrap();
        // A cycle inside a class is walked once.
        std::os::unix::fs::symlink(dir.path().join("b"), dir.path().join("b/again")).unwrap();
        let ds = ImageFolder::labelled(&params(dir.path(), "train")).unwrap();
        assert_eq!(ds.ids, ["a/own.png", "a/linked/x.png", "b/x.png"]);
        assert_eq!(ds.targets().unwrap(), [Some(0), Some(0), Some(1)]);
    }

    #[test]
    fn order_follows_torchvision_walk() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["c/b.png", "c/a/x.png", "c/a-b/y.png", "c/a.png"] {
            write_png_gray8(&dir.path().join(f), 1, 1, &[0]).unwrap();
        }
        let ds = ImageFolder::unlabelled(&params(dir.path(), "train")).unwrap();
        // As torchvision 0.26 orders the same tree: folders sorted by path ("c" < "c/a" <
        // "c/a-b"), files by name within each.
        assert_eq!(ds.ids, ["c/a.png", "c/b.png", "c/a/x.png", "c/a-b/y.png"]);
    }

    #[test]
    fn bad_folders_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let e = ImageFolder::labelled(&params(dir.path(), "train"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds no class folders") && e.contains(&dir.path().display().to_string()),
            "{e}"
        );
        let e = ImageFolder::unlabelled(&params(dir.path(), "train"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no images") && e.contains(&dir.path().display().to_string()),
            "{e}"
        );
        let e = ImageFolder::labelled(&params(&dir.path().join("nope"), "train"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope not found"), "{e}");
        write_image_folder(dir.path(), &["a"], 2, 4).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/x.txt"), "").unwrap();
        let e = ImageFolder::labelled(&params(dir.path(), "train"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("class folder") && e.contains("/b holds no images"),
            "{e}"
        );
        std::fs::remove_dir_all(dir.path().join("b")).unwrap();
        let p =
            Params::from_json(&format!(r#"{{"root": {:?}, "classes": 3}}"#, dir.path())).unwrap();
        let e = ImageFolder::labelled(&p).unwrap_err().to_string();
        assert!(
            e.contains("ImageFolder: unknown parameter `classes`"),
            "{e}"
        );
        // A truncated PNG: an error at get naming the file.
        let victim = dir.path().join("a/img0.png");
        let bytes = std::fs::read(&victim).unwrap();
        std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
        let ds = ImageFolder::labelled(&params(dir.path(), "train")).unwrap();
        let e = ds.get(0).unwrap_err().to_string();
        assert!(e.contains(&victim.display().to_string()), "{e}");
    }
}
