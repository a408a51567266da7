//! Progress of a training run: a bar per epoch (step, loss, images/s, ETA) on a terminal;
//! nothing otherwise (the engine prints one plain line per epoch).

use indicatif::{ProgressBar, ProgressStyle};
use ssl_plugin_api::tch::Tensor;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Progress: a bar per epoch (step, loss, images/s, ETA) on a terminal; nothing here
/// otherwise (the caller prints one plain line per epoch).
pub struct Progress {
    bar: std::cell::RefCell<Option<ProgressBar>>,
    interactive: bool,
    /// When the loss was last read: reading it waits for the device, so at most every
    /// [`LOSS_EVERY`].
    loss_read: std::cell::Cell<Option<Instant>>,
}

/// How often the bar reads the loss (a host synchronisation on a GPU).
const LOSS_EVERY: Duration = Duration::from_millis(500);

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            bar: std::cell::RefCell::new(None),
            interactive: std::io::stderr().is_terminal(),
            loss_read: std::cell::Cell::new(None),
        }
    }

    /// No bar (the processes of a distributed run other than rank 0).
    pub fn hidden() -> Progress {
        Progress {
            interactive: false,
            ..Progress::new()
        }
    }

    pub fn start_epoch(&self, epoch: usize, epochs: usize, steps: usize) {
        if !self.interactive {
            return;
        }
        let bar = ProgressBar::new(steps as u64);
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
        if let Some(old) = self.bar.replace(Some(bar)) {
            old.finish_and_clear();
        }
    }

    pub fn step(&self, step: usize, loss: &Tensor, images_per_second: f64) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.set_position(step as u64);
            if self
                .loss_read
                .get()
                .is_some_and(|at| at.elapsed() < LOSS_EVERY)
            {
                return;
            }
            self.loss_read.set(Some(Instant::now()));
            bar.set_message(format!(
                "loss {:.4} {:.1} images/s",
                loss.double_value(&[]),
                images_per_second
            ));
        }
    }

    pub fn finish_epoch(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}
