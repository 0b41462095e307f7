//! Egress policy. The only module that can construct [`Permitted`].

/// A value the egress policy has allowed to leave for one destination. The field is private and
/// the only constructor lives in this module, so the uplink (which accepts only `Permitted<T>`)
/// cannot be handed anything the policy did not approve.
#[derive(Debug, Clone)]
pub struct Permitted<T> {
    inner: T,
}

impl<T> Permitted<T> {
    fn new(inner: T) -> Self {
        Self { inner }
    }

    pub fn get(&self) -> &T {
        &self.inner
    }

    pub fn into_inner(self) -> T {
        self.inner
    }
}
