//! Statistics of the evaluation: bootstrap confidence intervals and label fractions.
