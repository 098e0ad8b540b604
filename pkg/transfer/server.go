package transfer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// Defaults of ServerOptions and PullOptions.
const (
	DefaultMaxTransfers = 4
	DefaultLogInterval  = 30 * time.Second
	DefaultIdleTimeout  = 2 * time.Minute
	// handshakeTimeout bounds the handshake and the request: a peer that opens a
	// connection and says nothing is dropped.
	handshakeTimeout = 10 * time.Second
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// TLS must require and verify client certificates (ServerTLS makes such a
	// configuration); NewServer refuses any other.
	TLS *tls.Config
	// Sources opens what may be sent.
	Sources Sources
	// RateLimit bounds in bytes a second what all transfers of this server send
	// together (0: no bound). A client may ask for less for its own transfer.
	RateLimit int64
	// MaxTransfers is how many transfers run at once (0: DefaultMaxTransfers);
	// more are answered ErrBusy, which clients retry.
	MaxTransfers int
	// Authorize, when set, decides whether the peer (its verified certificate)
	// may read the source ID; an error refuses it (ErrRefused). Unset, every
	// peer with a certificate of the CA may read every source.
	Authorize func(peer *x509.Certificate, id string) error
	// LogInterval is how often a running transfer logs its progress at V(2)
	// (0: DefaultLogInterval).
	LogInterval time.Duration
	// IdleTimeout drops a client that reads nothing for this long (0:
	// DefaultIdleTimeout).
	IdleTimeout time.Duration
	// Clock paces the rate limit (nil: the real clock).
	Clock Clock
}

// Server sends sources to the clients that ask, each on a connection of its own.
type Server struct {
	o       ServerOptions
	tls     *tls.Config
	limiter *Limiter
	slots   chan struct{}

	active Running
}

// NewServer checks o and returns a Server.
func NewServer(o ServerOptions) (*Server, error) {
	cfg, err := serverConfig(o.TLS)
	if err != nil {
		return nil, err
	}
	if o.Sources == nil {
		return nil, errors.New("transfer server: no sources")
	}
	if o.RateLimit < 0 {
		return nil, fmt.Errorf("transfer server: rate limit %d bytes/s", o.RateLimit)
	}
	if o.MaxTransfers <= 0 {
		o.MaxTransfers = DefaultMaxTransfers
	}
	if o.LogInterval <= 0 {
		o.LogInterval = DefaultLogInterval
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	return &Server{o: o, tls: cfg, limiter: NewLimiter(o.RateLimit, o.Clock),
		slots: make(chan struct{}, o.MaxTransfers)}, nil
}

// Listen opens the TCP listener a Server serves on: addr is host:port with the
// host given (the node's address; 0.0.0.0 or [::] listen everywhere, only when
// asked so).
func Listen(addr string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("transfer address %q: %w", addr, err)
	}
	if host == "" {
		return nil, fmt.Errorf("transfer address %q: the host is required (the node's address)", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return nil, fmt.Errorf("transfer address %q: a port number is required", addr)
	}
	return net.Listen("tcp", addr)
}

// Serve accepts connections on l until ctx ends (then l is closed, and every
// transfer stopped and waited for) or l fails.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("transfer server: %w", err)
		}
		wg.Go(func() { s.handle(ctx, c) })
	}
}

// Transfers returns the progress of the transfers running now.
func (s *Server) Transfers() []Status { return s.active.Status() }

// handle serves one connection: handshake, request, source, records.
func (s *Server) handle(ctx context.Context, raw net.Conn) {
	defer raw.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	logger := klog.FromContext(ctx).WithValues("peer", raw.RemoteAddr().String())

	conn := tls.Server(raw, s.tls)
	_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := conn.HandshakeContext(ctx); err != nil {
		// No certificate, another CA's, not TLS at all: nothing was read.
		logger.V(4).Info("Transfer connection refused", "err", err)
		return
	}
	peer := conn.ConnectionState().PeerCertificates[0]
	logger = logger.WithValues("peerName", peer.Subject.CommonName)
	fr := newFrameReader(conn)
	t, p, err := fr.next()
	if err == nil && t != fRequest {
		err = errFrame("%s frame instead of a request", t)
	}
	var req *request
	if err == nil {
		req, err = decodeRequest(p)
	}
	w := &sendConn{conn: conn, ctx: ctx, idle: s.o.IdleTimeout, limiters: []*Limiter{s.limiter}}
	fw := newFrameWriter(w)
	if err != nil {
		logger.V(2).Info("Transfer request refused", "err", err)
		s.refuse(fw, err)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	logger = logger.WithValues("volumeID", req.ID)
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		s.refuse(fw, fmt.Errorf("%d transfers already run: %w", s.o.MaxTransfers, ErrBusy))
		return
	}
	if s.o.Authorize != nil {
		if err := s.o.Authorize(peer, req.ID); err != nil {
			logger.V(2).Info("Transfer refused", "err", err)
			s.refuse(fw, fmt.Errorf("%w: %w", ErrRefused, err))
			return
		}
	}
	if req.RateLimit > 0 {
		w.limiters = append(w.limiters, NewLimiter(req.RateLimit, s.o.Clock))
	}
	prog := &Progress{ID: req.ID, Peer: raw.RemoteAddr().String(), Sending: true, Started: time.Now()}
	s.active.Track(prog, true)
	defer s.active.Track(prog, false)
	err = s.send(klog.NewContext(ctx, logger), fw, req, prog)
	var ne net.Error
	switch {
	case err == nil:
	case ctx.Err() != nil, errors.As(err, &ne), errors.Is(err, net.ErrClosed), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ECONNRESET):
		// The client went away (it resumes when it comes back), or this server stops.
		logger.V(2).Info("Transfer interrupted", "bytes", prog.Bytes.Load(), "err", err)
		return
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrBusy):
		logger.V(2).Info("Transfer refused", "err", err)
		s.refuse(fw, err)
		return
	default:
		logger.Error(err, "Transfer failed", "bytes", prog.Bytes.Load())
		s.refuse(fw, err)
		return
	}
	logger.V(2).Info("Transfer sent", "bytes", prog.Bytes.Load(), "resumedBytes", prog.Resumed.Load(), "skippedBytes", prog.Skipped.Load(),
		"entries", prog.Entries.Load(), "duration", time.Since(prog.Started).Round(time.Millisecond))
}

// refuse sends err to the client as an error frame, as far as the connection
// still takes one.
func (s *Server) refuse(fw *frameWriter, err error) {
	var e enc
	if fw.frame(fError, encodeError(&e, err)) == nil {
		_ = fw.flush()
	}
}

// send opens the source, answers the header and sends the records and the end.
func (s *Server) send(ctx context.Context, fw *frameWriter, req *request, prog *Progress) (err error) {
	// Taken before anything of the source is read: a later delta pull trusts
	// the files whose ctime is older.
	began := time.Now()
	src, err := s.o.Sources.Open(ctx, req.ID)
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed && src.Close != nil {
			_ = src.Close()
		}
	}()
	var st stream
	switch src.Kind {
	case KindTree:
		st, err = openTree(ctx, src, req)
	case KindImage:
		st, err = openImage(src, req)
	default:
		err = fmt.Errorf("source %s of kind %v", req.ID, src.Kind)
	}
	if err != nil {
		return err
	}
	defer st.close()
	h := header{Version: req.Version, Kind: src.Kind, SizeBytes: src.SizeBytes, FSType: src.FSType,
		AccessType: src.AccessType, Generation: src.Generation, ServerTime: began.UnixNano()}
	st.prepare(&h)
	prog.Total.Store(h.Total)
	if h.Resumed {
		prog.Resumes.Add(1)
	}
	klog.FromContext(ctx).V(2).Info("Transfer started", "kind", src.Kind, "resumed", h.Resumed, "delta", h.Delta, "totalBytes", h.Total)
	sd := &sender{ctx: ctx, fw: fw, prog: prog, buf: make([]byte, dataChunk)}
	if err := fw.frame(fHeader, h.encode(&sd.e)); err != nil {
		return err
	}
	stopLog := logProgress(ctx, prog, s.o.LogInterval, "Transfer sending")
	err = st.send(sd)
	stopLog()
	if err != nil {
		return err
	}
	closed = true
	if src.Close != nil {
		if err := src.Close(); err != nil {
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
	}
	if err := fw.frame(fEnd, nil); err != nil {
		return err
	}
	return fw.flush()
}

// logProgress logs p at V(2) every interval until the returned func is called.
func logProgress(ctx context.Context, p *Progress, interval time.Duration, msg string) func() {
	logger := klog.FromContext(ctx)
	if !logger.V(2).Enabled() {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				el := time.Since(p.Started)
				logger.V(2).Info(msg, "bytes", p.Bytes.Load(), "totalBytes", p.Total.Load(),
					"entries", p.Entries.Load(), "bytesPerSecond", int64(float64(p.Bytes.Load())/el.Seconds()))
			case <-done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() { close(done) }
}

// sendConn is what the server writes to: every write first waits for the rate
// limits (so they bound the data, the records' few bytes of framing included;
// TLS adds its own 22 bytes a record), then gets a fresh idle deadline.
type sendConn struct {
	conn     net.Conn
	ctx      context.Context
	idle     time.Duration
	limiters []*Limiter
}

// sendPiece is the most one write sends before it waits for the limits again.
const sendPiece = 64 << 10

func (c *sendConn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, sendPiece)
		for _, l := range c.limiters {
			if err := l.Wait(c.ctx, n); err != nil {
				return done, err
			}
		}
		_ = c.conn.SetWriteDeadline(time.Now().Add(c.idle))
		m, err := c.conn.Write(p[done : done+n])
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
