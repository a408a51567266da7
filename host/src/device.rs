//! The libtorch device a command runs on (`--device`, or the `device` parameter of a run).

use anyhow::{anyhow, bail, Result};
use ssl_plugin_api::tch::{self, Device};
use ssl_plugin_api::torch::parse_device;

/// The device called `name` (`cpu`, `cuda` or `cuda:N`), or CUDA when available and no name is
/// given. A CUDA index this machine does not have is an error that says how many it has.
pub fn choose(name: Option<&str>) -> Result<Device> {
    match name {
        None => Ok(Device::cuda_if_available()),
        Some(name) => {
            let device = parse_device(name).map_err(|e| anyhow!("--device: {e}"))?;
            if let Device::Cuda(i) = device {
                let count = tch::Cuda::device_count();
                if i as i64 >= count {
                    bail!("--device={name}: this machine has {count} CUDA device(s)");
                }
            }
            Ok(device)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_and_checked() {
        assert_eq!(choose(Some("cpu")).unwrap(), Device::Cpu);
        let count = tch::Cuda::device_count();
        let err = choose(Some(&format!("cuda:{count}")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("has {count} CUDA device(s)")),
            "{err}"
        );
        let err = choose(Some("tpu")).unwrap_err().to_string();
        assert!(err.starts_with("--device: "), "{err}");
    }
}
