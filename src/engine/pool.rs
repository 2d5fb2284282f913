//! `pool`: an epoll loop for the I/O, a fixed pool of worker threads for the work.
//!
//! The loop thread only waits, reads, decodes and writes; each complete request goes over a
//! queue to one of `--workers` threads, which runs the workload and sends the reply back over
//! another queue, ringing an eventfd so the loop wakes up. A slow request (`--work`) then
//! occupies a worker, not the loop, and several requests run in parallel on several cores.
//! The price: two queue hops and a wake-up per request, and replies that finish out of order
//! must be put back in order per connection (the protocol answers in order) before they are
//! written.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use super::nonblocking::{Conn, EpollWaiter, LoopCore, Token, FIRST_ENGINE_EVENT};
use super::EngineCtx;
use crate::os::sys::{interest, EventFd};
use crate::sansio::frame::OutFrame;
use crate::sansio::session::{Request, SessionError};
use crate::sansio::workload;

const COMPLETIONS: u64 = FIRST_ENGINE_EVENT;

struct Job {
    token: Token,
    generation: u64,
    seq: u64,
    request: Request,
}

struct Done {
    token: Token,
    generation: u64,
    seq: u64,
    reply: OutFrame,
}

/// Puts one connection's replies back in request order.
#[derive(Default)]
struct Reorder {
    generation: u64,
    next_seq: u64,
    next_out: u64,
    ready: BTreeMap<u64, OutFrame>,
}

/// This engine's face: the registry starts it for `--engine pool`.
pub struct PoolEngine;

impl super::Engine for PoolEngine {
    type Options = super::PoolOptions;
    fn start(
        config: super::ServeConfig,
        options: super::PoolOptions,
    ) -> anyhow::Result<super::RunningServer> {
        if options.workers == 0 {
            anyhow::bail!("--workers must be at least 1");
        }
        let workers = options.workers;
        super::listen_and_run(
            config,
            super::Model::Single(Arc::new(move |ctx, l| serve(ctx, l, workers))),
        )
    }
}

pub fn serve(ctx: Arc<EngineCtx>, listener: TcpListener, workers: usize) -> anyhow::Result<()> {
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let completions = Arc::new(EventFd::new()?);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let mut handles = Vec::with_capacity(workers);
    for i in 0..workers {
        let (rx, tx, bell) = (job_rx.clone(), done_tx.clone(), completions.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("pool-worker-{i}"))
                .spawn(move || work(&rx, &tx, &bell))?,
        );
    }
    drop(done_tx);
    let result = event_loop(ctx, listener, &job_tx, &done_rx, &completions);
    drop(job_tx); // workers see the queue close and exit
    for h in handles {
        let _ = h.join();
    }
    result
}

fn work(jobs: &Mutex<Receiver<Job>>, done: &Sender<Done>, bell: &EventFd) {
    loop {
        // The lock is held only to take one job, never while working.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let reply = workload::execute(job.request);
        let finished = Done {
            token: job.token,
            generation: job.generation,
            seq: job.seq,
            reply,
        };
        if done.send(finished).is_err() {
            return;
        }
        bell.notify();
    }
}

fn event_loop(
    ctx: Arc<EngineCtx>,
    listener: TcpListener,
    jobs: &Sender<Job>,
    done: &Receiver<Done>,
    completions: &EventFd,
) -> anyhow::Result<()> {
    let mut core = LoopCore::new(ctx, listener)?;
    let mut waiter = EpollWaiter::new(&core)?;
    waiter.epoll.add(completions.fd(), COMPLETIONS, interest::READ)?;
    let mut dispatcher = Dispatcher {
        jobs,
        orders: Vec::new(),
        decoded: Vec::new(),
    };
    let mut ready: Vec<Token> = Vec::new();
    let mut finished: Vec<Done> = Vec::new();
    let conn_interest = interest::READ | interest::WRITE | interest::EDGE;
    loop {
        ready.clear();
        waiter.wait(&mut core, conn_interest, &mut ready, |_| {
            // The only engine event here: workers finished something.
            completions.drain();
            finished.extend(done.try_iter());
        })?;
        // Queue finished replies in request order; the connection then has something to write.
        for d in finished.drain(..) {
            let t = d.token;
            if dispatcher.complete(&mut core, d) {
                ready.push(t);
            }
        }
        ready.extend(core.take_more_work());
        for &t in &ready {
            core.drive_with(t, &mut |t, conn, data| dispatcher.dispatch(t, conn, data));
        }
        if core.finished() {
            return Ok(());
        }
    }
}

/// The loop's side of the pool: hands requests out, puts replies back in order.
struct Dispatcher<'a> {
    jobs: &'a Sender<Job>,
    orders: Vec<Reorder>,
    decoded: Vec<Request>,
}

impl Dispatcher<'_> {
    /// Decodes what `conn` received and queues every complete request for the workers.
    fn dispatch(&mut self, t: Token, conn: &mut Conn, data: &[u8]) -> Result<usize, SessionError> {
        if let Err(e) = conn.session.receive_requests(data, &mut self.decoded) {
            // The requests before the bad frame go nowhere: the connection closes, and left
            // here they would be handed out with the next connection's token.
            self.decoded.clear();
            return Err(e);
        }
        if self.orders.len() <= t {
            self.orders.resize_with(t + 1, Reorder::default);
        }
        let order = &mut self.orders[t];
        if order.generation != conn.generation {
            *order = Reorder {
                generation: conn.generation,
                ..Reorder::default()
            };
        }
        let handed = self.decoded.len();
        for request in self.decoded.drain(..) {
            let job = Job {
                token: t,
                generation: conn.generation,
                seq: order.next_seq,
                request,
            };
            order.next_seq += 1;
            // Workers outlive the loop, so the queue is open while the loop runs.
            let _ = self.jobs.send(job);
        }
        Ok(handed)
    }

    /// Files a finished reply; queues every reply that is now next in line. Returns whether
    /// the connection still exists (and so has something new to write).
    fn complete(&mut self, core: &mut LoopCore, d: Done) -> bool {
        let Some(conn) = core.conns.get_mut(d.token) else {
            return false;
        };
        let Some(order) = self.orders.get_mut(d.token) else {
            return false;
        };
        if conn.generation != d.generation || order.generation != d.generation {
            return false; // the connection it belonged to is gone
        }
        order.ready.insert(d.seq, d.reply);
        while let Some(reply) = order.ready.remove(&order.next_out) {
            conn.session.queue_handed_back(reply);
            order.next_out += 1;
        }
        true
    }
}
