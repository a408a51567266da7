//! The linear probe: logistic regression on standardised features.
