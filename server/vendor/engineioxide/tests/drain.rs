//! `drain::close_paced` on websocket sessions: each client gets its engine.io close packet at
//! its turn, and a session that waits for its turn keeps working.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use engineioxide::{
    Str,
    drain::close_paced,
    handler::EngineIoHandler,
    socket::{DisconnectReason, Socket},
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

mod fixture;

use fixture::{StreamImpl, create_server, create_ws_connection};

/// Echoes messages, hands every new socket to the test and reports disconnects.
#[derive(Debug)]
struct Handler {
    sockets: mpsc::UnboundedSender<Arc<Socket<()>>>,
    closed: mpsc::UnboundedSender<DisconnectReason>,
}

impl EngineIoHandler for Handler {
    type Data = ();
    fn on_connect(self: Arc<Self>, socket: Arc<Socket<()>>) {
        self.sockets.send(socket).unwrap();
    }
    fn on_disconnect(&self, _socket: Arc<Socket<()>>, reason: DisconnectReason) {
        self.closed.send(reason).unwrap();
    }
    fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<()>>) {
        socket.emit(msg).ok();
    }
    fn on_binary(self: &Arc<Self>, _data: Bytes, _socket: Arc<Socket<()>>) {}
}

/// Reads text frames, answering pings, until one satisfies `want`; `None` if the websocket
/// ends first or nothing comes within 2 s.
async fn read_until(
    ws: &mut WebSocketStream<StreamImpl>,
    want: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        let Ok(Message::Text(t)) = msg else { continue };
        if t.as_str() == "2" {
            ws.send(Message::Text("3".into())).await.ok()?;
        }
        if want(t.as_str()) {
            return Some(t.to_string());
        }
    }
}

#[tokio::test]
async fn websocket_sessions_close_one_interval_apart_and_work_until_then() {
    let (sockets_tx, mut sockets) = mpsc::unbounded_channel();
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let mut svc = create_server(Handler {
        sockets: sockets_tx,
        closed: closed_tx,
    })
    .await;
    let mut a = create_ws_connection(&mut svc).await;
    let mut b = create_ws_connection(&mut svc).await;
    let sa = sockets.recv().await.unwrap();
    let sb = sockets.recv().await.unwrap();
    assert!(read_until(&mut a, |t| t.starts_with('0')).await.is_some());
    assert!(read_until(&mut b, |t| t.starts_with('0')).await.is_some());

    let interval = Duration::from_millis(300);
    let start = Instant::now();
    let paced = tokio::spawn(close_paced([sa.id, sb.id], interval));

    // the first gets its close packet at once
    assert_eq!(read_until(&mut a, |t| t == "1").await.as_deref(), Some("1"));
    assert!(start.elapsed() < interval / 2, "{:?}", start.elapsed());
    assert_eq!(closed.recv().await, Some(DisconnectReason::ClosingServer));
    // the second still works while it waits
    b.send(Message::Text("4hello".into())).await.unwrap();
    assert_eq!(
        read_until(&mut b, |t| t.starts_with('4')).await.as_deref(),
        Some("4hello")
    );
    assert!(!sb.is_closed());
    // then gets its close packet one interval after the first
    assert_eq!(read_until(&mut b, |t| t == "1").await.as_deref(), Some("1"));
    let took = start.elapsed();
    assert!(took >= interval, "second close after {took:?}");
    assert!(took < interval * 3, "second close after {took:?}");
    assert_eq!(closed.recv().await, Some(DisconnectReason::ClosingServer));
    assert_eq!(paced.await.unwrap(), 2);
    tokio::time::timeout(Duration::from_secs(1), sb.closed())
        .await
        .unwrap();
}
