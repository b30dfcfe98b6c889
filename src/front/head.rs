//! Reading one HTTP/1 request head: within its deadline and limits, scanned as it arrives
//! ([`vivgate_parse::head`]), with the request line's minor version served as 1.1; and the
//! `Origin` line of a head that was refused, for its CORS headers.

use super::*;

/// Reads one request head into `buf`. The first request of a connection must arrive whole
/// by `first` (`head_timeout` after the connection began); a later one may idle up to `keepalive_timeout`,
/// then must arrive whole within `head_timeout` of its first byte. A stop ends the wait for a
/// request that has not started.
pub(super) async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limits: &Limits,
    first: Option<Instant>,
    shutdown: &mut ShutdownWatch,
) -> Result<HeadInfo, NoHead> {
    let mut scanner = HeadScanner::new();
    let mut deadline = first;
    let mut request_line = false;
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(INITIAL_BUF);
        }
        let started = !buf.is_empty();
        let wait_until = deadline.unwrap_or_else(|| Instant::now() + limits.keepalive_timeout);
        let read = tokio::time::timeout_at(wait_until, stream.read_buf(buf));
        let result = if started {
            read.await
        } else {
            tokio::select! {
                biased;
                r = read => r,
                _ = stopped(shutdown) => return Err(NoHead::Closed),
            }
        };
        match result {
            // a head that started but did not finish in time is answered; silence is not
            Err(_) if started => return Err(NoHead::Refuse(GatewayError::HeadTimeout)),
            Err(_) => return Err(NoHead::Closed),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(NoHead::Closed),
            Ok(Ok(_)) => {}
        }
        if !request_line {
            // HTTP/1.2 and up are served as HTTP/1.1
            request_line = vivgate_parse::head::normalize_minor_version(buf);
        }
        match scanner.scan(buf, limits.head) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(e) => return Err(NoHead::Refuse(e.into())),
        }
        // a head that started must now arrive whole (the clock is read only for a split head)
        if deadline.is_none() {
            deadline = Some(Instant::now() + limits.head_timeout);
        }
    }
}

/// The value of the one complete `Origin` line among the header lines that arrived (the head
/// may be cut short: a line counts once its CRLF is in); `None` without one, with two, or when
/// it is not plain text.
pub(super) fn origin_line(head: &[u8]) -> Option<&str> {
    // what follows the last LF is not a whole line yet
    let whole = &head[..head.iter().rposition(|b| *b == b'\n')?];
    let mut found = None;
    // the request line first, then header lines up to the blank line
    for line in whole.split(|b| *b == b'\n').skip(1) {
        // a bare LF: the head is broken from here on
        let Some(line) = line.strip_suffix(b"\r") else {
            break;
        };
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if line[..colon].eq_ignore_ascii_case(b"origin") {
            if found.is_some() {
                return None;
            }
            let value = std::str::from_utf8(&line[colon + 1..]).ok()?;
            found = Some(value.trim_matches([' ', '\t']));
        }
    }
    found
}

/// Resolves once the server is stopping (never, if the stop signal is gone).
pub(super) async fn stopped(w: &mut ShutdownWatch) {
    loop {
        if *w.borrow() {
            return;
        }
        if w.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
