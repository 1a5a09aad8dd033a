//! One shared copy of each distinct allowed-service-accounts value, counted
//! by the Secrets that carry it: thousands of Secrets say the same few lists,
//! and each keeps a 4-byte handle. A value goes when its last Secret does.

use std::collections::HashMap;
use std::sync::Arc;

/// An annotation value held in `Annotations` (or none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handle(u32);

impl Handle {
    pub const NONE: Handle = Handle(0);
}

struct Held {
    value: Arc<str>,
    users: u32,
}

#[derive(Default)]
pub struct Annotations {
    /// Handle `n` is slot `n - 1`.
    slots: Vec<Option<Held>>,
    by_value: HashMap<Arc<str>, u32>,
    free: Vec<u32>,
}

impl Annotations {
    /// A handle on `value` for one more Secret.
    pub fn acquire(&mut self, value: Option<&str>) -> Handle {
        let Some(value) = value else { return Handle::NONE };
        if let Some(&slot) = self.by_value.get(value) {
            self.held_mut(slot).users += 1;
            return Handle(slot + 1);
        }
        let value: Arc<str> = Arc::from(value);
        let held = Held { value: value.clone(), users: 1 };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(held);
                slot
            }
            None => {
                self.slots.push(Some(held));
                self.slots.len() as u32 - 1
            }
        };
        self.by_value.insert(value, slot);
        Handle(slot + 1)
    }

    /// One Secret fewer holds `handle`.
    pub fn release(&mut self, handle: Handle) {
        let Some(slot) = handle.0.checked_sub(1) else { return };
        let held = self.held_mut(slot);
        held.users -= 1;
        if held.users == 0
            && let Some(gone) = self.slots[slot as usize].take()
        {
            self.by_value.remove(&gone.value);
            self.free.push(slot);
        }
    }

    pub fn get(&self, handle: Handle) -> Option<&Arc<str>> {
        let slot = handle.0.checked_sub(1)?;
        self.slots[slot as usize].as_ref().map(|h| &h.value)
    }

    #[cfg(test)]
    pub fn distinct(&self) -> usize {
        self.by_value.len()
    }

    fn held_mut(&mut self, slot: u32) -> &mut Held {
        self.slots[slot as usize].as_mut().expect("a handle in use names a held value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_shared_and_goes_with_its_last_user() {
        let mut a = Annotations::default();
        let web = a.acquire(Some("web"));
        assert_eq!(a.acquire(Some("web")), web);
        let worker = a.acquire(Some("worker"));
        assert_ne!(worker, web);
        assert_eq!(a.acquire(None), Handle::NONE);
        assert_eq!(a.get(Handle::NONE), None);
        a.release(web);
        assert_eq!(a.get(web).map(|v| &**v), Some("web"));
        a.release(web);
        assert_eq!(a.get(web), None);
        assert_eq!(a.distinct(), 1);
        // Its slot is used again, for another value.
        let admin = a.acquire(Some("admin"));
        assert_eq!(admin, web);
        assert_eq!(a.get(admin).map(|v| &**v), Some("admin"));
        assert_eq!(a.get(worker).map(|v| &**v), Some("worker"));
    }
}
