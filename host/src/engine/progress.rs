//! Progress of a training run: a bar per epoch (step, loss, images/s, ETA) on a terminal;
//! nothing otherwise (the engine prints one plain line per epoch).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Progress: a bar per epoch (step, loss, images/s, ETA) on a terminal; nothing here
/// otherwise (the caller prints one plain line per epoch).
pub struct Progress {
    bar: std::cell::RefCell<Option<ProgressBar>>,
    interactive: bool,
    /// The loss last read (the step path's checks read it with their flags, every few steps:
    /// a read waits for the device).
    loss: std::cell::Cell<Option<f64>>,
}

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
            loss: std::cell::Cell::new(None),
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

    /// After step `step` of the epoch; `loss` when it was read at this step.
    pub fn step(&self, step: usize, loss: Option<f64>, images_per_second: f64) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.set_position(step as u64);
            if loss.is_some() {
                self.loss.set(loss);
            }
            if let Some(loss) = self.loss.get() {
                bar.set_message(format!("loss {loss:.4} {images_per_second:.1} images/s"));
            }
        }
    }

    pub fn finish_epoch(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}
