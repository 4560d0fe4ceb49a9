//! Request bodies with a rate floor and a per-source byte budget.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::listener::BodyBudget;

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client sent it slower than the floor.
    #[error("request body slower than {min_rate} bytes/s after {grace:?} ({got} bytes)")]
    TooSlow {
        /// The floor, bytes a second.
        min_rate: u64,
        /// The grace before it applies.
        grace: Duration,
        /// Bytes that had arrived.
        got: u64,
    },
    /// The client's source address, or all clients, have too many body bytes in flight.
    #[error("more than {cap} body bytes in flight from this client's address, or from all clients")]
    OverBudget {
        /// The budget.
        cap: u64,
    },
    /// Reading it failed (the connection closed, bad chunking).
    #[error("reading the request body")]
    Read(#[source] hyper::Error),
}

/// A body that must arrive at `min_rate` bytes a second on average once `grace` has
/// passed, whose bytes count against its source's [`BodyBudget`] until it is dropped.
pub struct MinRate<B> {
    inner: B,
    min_rate: u64,
    grace: Duration,
    start: Instant,
    got: u64,
    deadline: Option<Pin<Box<Sleep>>>,
    budget: BodyBudget,
    charged: u64,
}

impl<B> MinRate<B> {
    /// Wraps `inner`; the clock starts now (the head has just arrived).
    pub fn new(inner: B, min_rate: u64, grace: Duration, budget: BodyBudget) -> Self {
        let start = Instant::now();
        let mut body = Self {
            inner,
            min_rate,
            grace,
            start,
            got: 0,
            deadline: None,
            budget,
            charged: 0,
        };
        if let Some(at) = body.due() {
            body.deadline = Some(Box::pin(tokio::time::sleep_until(at)));
        }
        body
    }

    /// When the bytes so far stop meeting the floor.
    fn due(&self) -> Option<Instant> {
        if self.min_rate == 0 {
            return None;
        }
        let earned = Duration::from_secs_f64(self.got as f64 / self.min_rate as f64);
        Some(self.start + self.grace + earned)
    }
}

impl<B> Drop for MinRate<B> {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

impl<B> Body for MinRate<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if !this.budget.charge(n) {
                        return Poll::Ready(Some(Err(BodyError::OverBudget {
                            cap: this.budget.cap(),
                        })));
                    }
                    this.charged += n;
                    this.got += n;
                    if let (Some(at), Some(d)) = (this.due(), this.deadline.as_mut()) {
                        d.as_mut().reset(at);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Read(e)))),
            Poll::Ready(None) => {
                this.deadline = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let late = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if late {
                    Poll::Ready(Some(Err(BodyError::TooSlow {
                        min_rate: this.min_rate,
                        grace: this.grace,
                        got: this.got,
                    })))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
