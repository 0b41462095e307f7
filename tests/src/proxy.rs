//! A TCP proxy on `127.0.0.1` that a test can cut and restore, to simulate a broken uplink
//! network without touching the broker: [`CutProxy::cut`] closes every open connection and makes
//! new ones close at once; [`CutProxy::restore`] lets connections through again.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// See the module docs. Dropping it stops the proxy and every connection through it.
#[derive(Debug)]
pub struct CutProxy {
    addr: SocketAddr,
    /// `true` while cut. Connection tasks watch it and end when it turns `true`.
    cut: Arc<watch::Sender<bool>>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy listener")?;
        let addr = listener.local_addr().context("proxy address")?;
        let cut = Arc::new(watch::channel(false).0);
        let state = cut.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *state.borrow() {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(forward(inbound, upstream, state.subscribe()));
            }
        });
        Ok(CutProxy { addr, cut, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Close every connection now and refuse new ones until [`CutProxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.accept.abort();
    }
}

async fn forward(mut inbound: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
    // Both sockets drop here: the client sees its connection reset or closed.
}
