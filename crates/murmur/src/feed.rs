//! The node-wide change feed, for a consumer that follows every change
//! into its own store: read from a remembered position, resume there after
//! a crash of either side.
//!
//! Every change the node applies (its own, or a peer's) is in the feed
//! once, under a sequence number that is dense and increasing and survives
//! crashes: it is written in the same batch as the change, and readers see
//! only what is durable. A consumer stores the number of the last entry it
//! applied in the same transaction as what it made of it, and resumes with
//! [`Cursor::After`] that number: nothing is lost, and an entry applied
//! twice (after a crash between the two) must be harmless to apply again.
//!
//! A [`FeedStream`] holds at most one page of entries; it reads the rest
//! from the store as the consumer asks, so a consumer that reads slowly (or
//! not at all) costs the node a page, never a backlog.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

pub use murmur_core::feed::FeedEntry;
use murmur_core::feed::{FeedError, FeedReader, MAX_FEED_PAGE};
use tokio::sync::watch;

use crate::Error;

/// Where a feed read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// From the first entry the node ever wrote ([`Error::FeedTrimmed`] if
    /// retention removed it: start from a snapshot then).
    Start,
    /// From the next entry written after the call.
    Now,
    /// From the entry after this sequence number: where a consumer that
    /// applied entry `seq` resumes.
    After(u64),
}

/// What a node's driver shares with its feed readers: the store, and the
/// number after the newest durable entry.
#[derive(Clone)]
pub(crate) struct FeedSource {
    pub(crate) reader: FeedReader,
    pub(crate) end: watch::Receiver<u64>,
    /// Read on the calling task instead of a blocking thread (a simulated
    /// node, whose store is in memory).
    pub(crate) inline: bool,
}

impl FeedSource {
    /// A stream from `cursor`.
    pub(crate) fn stream(&self, cursor: Cursor) -> FeedStream {
        let next = match cursor {
            Cursor::Start => 1,
            Cursor::Now => *self.end.borrow(),
            Cursor::After(seq) => seq.saturating_add(1),
        };
        FeedStream {
            source: self.clone(),
            next,
            page: VecDeque::new(),
        }
    }
}

/// The change feed from a cursor on, following new entries as they become
/// durable ([`crate::Node::feed`]).
pub struct FeedStream {
    source: FeedSource,
    /// The sequence number of the next entry to read from the store.
    next: u64,
    /// Entries read and not yet handed out (at most one page).
    page: VecDeque<FeedEntry>,
}

impl FeedStream {
    /// The next entry, waiting for one to be written if the stream has
    /// caught up. `None` once the node shuts down;
    /// [`Error::FeedTrimmed`] if the entries from the cursor on were
    /// removed by retention (start again from a snapshot).
    pub async fn next(&mut self) -> Option<Result<FeedEntry, Error>> {
        loop {
            if let Some(entry) = self.page.pop_front() {
                return Some(Ok(entry));
            }
            let end = *self.source.end.borrow_and_update();
            if self.next < end {
                match self.read(end).await {
                    Ok(()) => continue,
                    Err(error) => return Some(Err(error)),
                }
            }
            self.source.end.changed().await.ok()?;
        }
    }

    /// The entries up to now, without waiting for new ones: `None` once
    /// the stream has caught up.
    pub async fn try_next(&mut self) -> Option<Result<FeedEntry, Error>> {
        if self.page.is_empty() {
            let end = *self.source.end.borrow();
            if self.next >= end {
                return None;
            }
            if let Err(error) = self.read(end).await {
                return Some(Err(error));
            }
        }
        self.page.pop_front().map(Ok)
    }

    /// The sequence number of the entry [`FeedStream::next`] gives next.
    pub fn position(&self) -> u64 {
        self.page.front().map_or(self.next, |entry| entry.seq)
    }

    /// The same entries as a [`futures_core::Stream`], for stream
    /// combinators.
    pub fn into_stream(self) -> FeedEntries {
        FeedEntries {
            next: Box::pin(take_next(self)),
        }
    }

    /// The number after the newest durable entry, as last published.
    pub fn end(&self) -> u64 {
        *self.source.end.borrow()
    }

    /// Reads the next page (before `end`) into `page`.
    async fn read(&mut self, end: u64) -> Result<(), Error> {
        let (reader, from) = (self.source.reader.clone(), self.next);
        let read = move || reader.read(from, end, MAX_FEED_PAGE);
        let entries = if self.source.inline {
            read()
        } else {
            tokio::task::spawn_blocking(read)
                .await
                .map_err(|_| Error::Closed)?
        };
        let entries = entries.map_err(|error| match error {
            FeedError::Trimmed { from, first } => Error::FeedTrimmed { from, first },
            FeedError::Store(error) => Error::Store(error),
            FeedError::Closed => Error::Closed,
        })?;
        self.next += entries.len() as u64;
        self.page.extend(entries);
        Ok(())
    }
}

/// A [`FeedStream`] as a [`futures_core::Stream`]
/// ([`FeedStream::into_stream`]).
pub struct FeedEntries {
    /// The read in progress; it hands the stream back with the entry.
    next: Pin<Box<dyn Future<Output = Taken> + Send>>,
}

type Taken = (FeedStream, Option<Result<FeedEntry, Error>>);

async fn take_next(mut stream: FeedStream) -> Taken {
    let entry = stream.next().await;
    (stream, entry)
}

impl futures_core::Stream for FeedEntries {
    type Item = Result<FeedEntry, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let (stream, entry) = ready!(self.next.as_mut().poll(cx));
        self.next = Box::pin(take_next(stream));
        Poll::Ready(entry)
    }
}
