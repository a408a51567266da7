//! Optimizers over tch tensors with checkpointable state.
