// enigmo-load: relay_bench.py's load driver for Enigmo, compiled. It speaks Enigmo's socket
// protocol as the Python driver does (token auth, batch frames, one ack frame per frame read,
// `send` → `sent`), but costs the driver's core a fraction of what Python does per frame, so a
// closed loop measures the server and PostgreSQL rather than the driver (the raw relay is then
// driven by ../shared/bench/wsload-go, its compiled twin, the same way).
//
// Build (Debian packages golang-go + golang-github-gorilla-websocket-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o var/enigmo-load ./bench/enigmo-load
//
// relay_bench.py writes a JSON config (ws URLs, token pairs, the loop's shape), starts the
// driver, waits for "ready" on its stdout (every socket connected and its queue drained), sends
// "go" on its stdin when the measured phase starts, waits for "done" (every envelope arrived, or
// the drain timed out) and reads the CPU figures, then sends "report" and reads one JSON result
// line. Loopback only, bounded.
package main

import (
	"bufio"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

type pair struct {
	Tx   string `json:"tx"`   // the sender's token
	Rx   string `json:"rx"`   // the receiver's token
	Chat string `json:"chat"` // the conversation's public id
	To   string `json:"to"`   // the receiver's username
}

type config struct {
	RxURL        string  `json:"rx_url"`
	TxURL        string  `json:"tx_url"`
	Query        string  `json:"query"` // "batch=1" or ""
	Pairs        []pair  `json:"pairs"`
	Messages     int     `json:"messages"` // per sender, closed loop
	Window       int     `json:"window"`
	Size         int     `json:"size"`
	Rate         float64 `json:"rate"`  // > 0: open loop at this many msg/s in total
	Total        int     `json:"total"` // open loop: envelopes in all
	DrainSeconds float64 `json:"drain_seconds"`
}

type frame struct {
	Type       string            `json:"type"`
	Frames     []json.RawMessage `json:"frames"`
	ID         string            `json:"id"`
	HasMore    *bool             `json:"has_more"`
	Ciphertext string            `json:"ciphertext"`
}

var t0 = time.Now()

func mono() int64 { return int64(time.Since(t0)) }

// stamp: an opaque "ciphertext" whose first 8 bytes carry the send time (ns since t0).
func stamp(at int64, size int) string {
	raw := make([]byte, size)
	binary.BigEndian.PutUint64(raw, uint64(at))
	return base64.StdEncoding.EncodeToString(raw)
}

func stampOf(ciphertext string) int64 {
	if len(ciphertext) < 12 {
		return -1
	}
	raw, err := base64.StdEncoding.DecodeString(ciphertext[:12])
	if err != nil || len(raw) < 8 {
		return -1
	}
	return int64(binary.BigEndian.Uint64(raw))
}

type receiver struct {
	conn      *websocket.Conn
	seen      map[string]struct{}
	latencies []int64
	ready     chan struct{}
	readyOnce sync.Once
}

type sender struct {
	conn    *websocket.Conn
	replies chan bool // true: sent, false: error
	stored  []string
	ready   chan struct{}
	once    sync.Once
}

var (
	received int64
	lastRecv int64
	refused  int64
	readers  sync.WaitGroup // every socket's reader, done when its socket is closed
)

func dial(base, query, token string) (*websocket.Conn, error) {
	address := base + "/api/v1/ws"
	if query != "" {
		address += "?" + query
	}
	dialer := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 1 << 16, WriteBufferSize: 1 << 14}
	header := http.Header{"Authorization": {"Token " + token}}
	var err error
	for attempt := 0; attempt < 5; attempt++ { // a handshake dropped under a connect storm is retried
		var c *websocket.Conn
		if c, _, err = dialer.Dial(address, header); err == nil {
			c.SetReadLimit(1 << 21)
			return c, nil
		}
		time.Sleep(time.Duration(500*(attempt+1)) * time.Millisecond)
	}
	return nil, err
}

// parse calls each on every frame of one WebSocket message (a batch frame's frames in order).
func parse(data []byte, each func(*frame)) {
	var f frame
	if json.Unmarshal(data, &f) != nil {
		return
	}
	if f.Type != "batch" {
		each(&f)
		return
	}
	for _, raw := range f.Frames {
		var inner frame
		if json.Unmarshal(raw, &inner) == nil {
			each(&inner)
		}
	}
}

func (r *receiver) run() {
	defer readers.Done()
	for {
		_, data, err := r.conn.ReadMessage()
		if err != nil {
			return
		}
		now := mono()
		var ids []string
		parse(data, func(f *frame) {
			switch f.Type {
			case "envelope":
				if _, dup := r.seen[f.ID]; !dup {
					r.seen[f.ID] = struct{}{}
					if at := stampOf(f.Ciphertext); at >= 0 {
						r.latencies = append(r.latencies, now-at)
					}
					atomic.AddInt64(&received, 1)
					atomic.StoreInt64(&lastRecv, now)
				}
				ids = append(ids, f.ID) // like a real client: one ack for what one read brought
			case "backlog":
				if f.HasMore != nil && !*f.HasMore {
					r.readyOnce.Do(func() { close(r.ready) })
				}
			}
		})
		if len(ids) > 0 {
			ack, _ := json.Marshal(map[string]interface{}{"type": "ack", "ids": ids})
			if r.conn.WriteMessage(websocket.TextMessage, ack) != nil {
				return
			}
		}
	}
}

func (s *sender) run() {
	defer readers.Done()
	for {
		_, data, err := s.conn.ReadMessage()
		if err != nil {
			close(s.replies)
			return
		}
		parse(data, func(f *frame) {
			switch f.Type {
			case "sent":
				s.stored = append(s.stored, f.ID)
				s.replies <- true
			case "error":
				atomic.AddInt64(&refused, 1)
				s.replies <- false
			case "backlog":
				if f.HasMore != nil && !*f.HasMore {
					s.once.Do(func() { close(s.ready) })
				}
			}
		})
	}
}

type sendFrame struct {
	Type            string      `json:"type"`
	ConversationID  string      `json:"conversation_id"`
	ClientMessageID string      `json:"client_message_id"`
	Recipients      []recipient `json:"recipients"`
}

type recipient struct {
	UserID     string `json:"user_id"`
	DeviceID   int    `json:"device_id"`
	Ciphertext string `json:"ciphertext"`
}

var ids = func() *rand.Rand { // client message ids need only be unique: seeded once, no system call per id
	var seed [8]byte
	crand.Read(seed[:])
	return rand.New(rand.NewSource(int64(binary.BigEndian.Uint64(seed[:]))))
}()
var idLock sync.Mutex

func newID() string { // a version 4 UUID
	var b [16]byte
	idLock.Lock()
	ids.Read(b[:])
	idLock.Unlock()
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func sendOne(c *websocket.Conn, p pair, at int64, size int) error {
	body, _ := json.Marshal(sendFrame{"send", p.Chat, newID(), []recipient{{p.To, 1, stamp(at, size)}}})
	return c.WriteMessage(websocket.TextMessage, body)
}

func connectAll(base, query string, tokens []string) ([]*websocket.Conn, error) {
	conns := make([]*websocket.Conn, len(tokens))
	var wg sync.WaitGroup
	var failed atomic.Value
	gate := make(chan struct{}, 100)
	for i, token := range tokens {
		wg.Add(1)
		go func(i int, token string) {
			defer wg.Done()
			gate <- struct{}{}
			defer func() { <-gate }()
			c, err := dial(base, query, token)
			if err != nil {
				failed.Store(err.Error())
				return
			}
			conns[i] = c
		}(i, token)
	}
	wg.Wait()
	if e := failed.Load(); e != nil {
		return nil, fmt.Errorf("%v", e)
	}
	return conns, nil
}

func loopback(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && (u.Hostname() == "localhost" || strings.HasPrefix(u.Hostname(), "127.") || u.Hostname() == "::1")
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(2)
}

func main() {
	path := flag.String("config", "", "the JSON config relay_bench.py wrote")
	flag.Parse()
	raw, err := os.ReadFile(*path)
	if err != nil {
		fail("config: %v", err)
	}
	var cfg config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		fail("config: %v", err)
	}
	if !loopback(cfg.RxURL) || !loopback(cfg.TxURL) {
		fail("refusing a non-loopback URL")
	}
	if len(cfg.Pairs) > 10000 || cfg.Messages > 100000 || cfg.Total > 1000000 || cfg.DrainSeconds > 600 {
		fail("bounds too large")
	}
	rxTokens, txTokens := make([]string, len(cfg.Pairs)), make([]string, len(cfg.Pairs))
	for i, p := range cfg.Pairs {
		rxTokens[i], txTokens[i] = p.Rx, p.Tx
	}
	started := time.Now()
	rxConns, err := connectAll(cfg.RxURL, cfg.Query, rxTokens)
	if err != nil {
		fail("connect: %v", err)
	}
	txConns, err := connectAll(cfg.TxURL, cfg.Query, txTokens)
	if err != nil {
		fail("connect: %v", err)
	}
	receivers, senders := make([]*receiver, len(rxConns)), make([]*sender, len(txConns))
	for i, c := range rxConns {
		receivers[i] = &receiver{conn: c, seen: map[string]struct{}{}, ready: make(chan struct{})}
		readers.Add(1)
		go receivers[i].run()
	}
	for i, c := range txConns {
		senders[i] = &sender{conn: c, replies: make(chan bool, 1<<12), ready: make(chan struct{})}
		readers.Add(1)
		go senders[i].run()
	}
	deadline := time.After(120 * time.Second)
	for i := range receivers {
		select {
		case <-receivers[i].ready:
		case <-deadline:
			fail("queues not drained in 120 s")
		}
		select {
		case <-senders[i].ready:
		case <-deadline:
			fail("queues not drained in 120 s")
		}
	}
	fmt.Printf("ready %.2f\n", time.Since(started).Seconds())
	in := bufio.NewReader(os.Stdin)
	if line, _ := in.ReadString('\n'); strings.TrimSpace(line) != "go" {
		fail("expected go, got %q", line)
	}

	start := mono()
	expected := int64(len(cfg.Pairs) * cfg.Messages)
	var wg sync.WaitGroup
	if cfg.Rate > 0 { // open loop: envelope k at start + k/rate from sender k % pairs, replies or not
		expected = int64(cfg.Total)
		counts := make([]int, len(senders))
		for k := 0; k < cfg.Total; k++ {
			counts[k%len(senders)]++
		}
		for i, s := range senders {
			wg.Add(1)
			go func(s *sender, n int) {
				defer wg.Done()
				for ; n > 0; n-- {
					if _, ok := <-s.replies; !ok {
						return
					}
				}
			}(s, counts[i])
		}
		interval := float64(time.Second) / cfg.Rate
		for k := 0; k < cfg.Total; k++ {
			at := start + int64(float64(k)*interval) // the scheduled time: latency includes our lateness
			if d := at - mono(); d > 0 {
				time.Sleep(time.Duration(d))
			}
			i := k % len(senders)
			if sendOne(senders[i].conn, cfg.Pairs[i], at, cfg.Size) != nil {
				break
			}
		}
	} else { // closed loop: at most `window` unanswered sends per sender
		for i, s := range senders {
			wg.Add(1)
			go func(s *sender, p pair) {
				defer wg.Done()
				inFlight, remaining := 0, cfg.Messages
				for remaining > 0 || inFlight > 0 {
					for remaining > 0 && inFlight < cfg.Window {
						if sendOne(s.conn, p, mono(), cfg.Size) != nil {
							return
						}
						inFlight, remaining = inFlight+1, remaining-1
					}
					if _, ok := <-s.replies; !ok {
						return
					}
					inFlight--
				}
			}(s, cfg.Pairs[i])
		}
	}
	wg.Wait()
	drain := time.Now().Add(time.Duration(cfg.DrainSeconds * float64(time.Second)))
	for atomic.LoadInt64(&received) < expected && time.Now().Before(drain) {
		time.Sleep(10 * time.Millisecond)
	}
	end := atomic.LoadInt64(&lastRecv)
	fmt.Println("done") // the measured phase is over: the parent reads the CPU figures now
	if line, _ := in.ReadString('\n'); strings.TrimSpace(line) != "report" {
		fail("expected report, got %q", line)
	}
	for _, c := range append(rxConns, txConns...) {
		c.Close()
	}
	readers.Wait() // what they recorded is read below

	seen := map[string]struct{}{}
	var latencies []int64
	for _, r := range receivers {
		for id := range r.seen {
			seen[id] = struct{}{}
		}
		latencies = append(latencies, r.latencies...)
	}
	stored, lost := 0, 0
	for _, s := range senders {
		for _, id := range s.stored {
			stored++
			if _, ok := seen[id]; !ok {
				lost++
			}
		}
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	pct := func(q float64) float64 {
		if len(latencies) == 0 {
			return -1
		}
		i := int(q*float64(len(latencies)-1) + 0.5)
		return float64(latencies[i]) / 1e6
	}
	out, _ := json.Marshal(map[string]interface{}{
		"driver":     "enigmo-load (Go)",
		"delivered":  len(seen),
		"stored":     stored,
		"lost":       lost,
		"errors":     atomic.LoadInt64(&refused),
		"duration_s": float64(end-start) / 1e9,
		"p50_ms":     pct(0.5),
		"p99_ms":     pct(0.99),
	})
	fmt.Println(string(out))
}
