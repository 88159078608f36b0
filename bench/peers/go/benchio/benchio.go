// Package benchio holds what the Go peer benchmarks share with kiln's: the
// ~200-byte JSON argument, the task counter that ends a worker after N
// tasks, the key=value result lines the harness reads, and the command
// line of the peers.
package benchio

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Payload is the one string argument of every benchmark task: a user record
// padded to 200 bytes, as kiln's and raw rabbitmq-c's benchmarks send.
func Payload(i int) string {
	s := fmt.Sprintf(`{"id":"%d","name":"user %d","email":"user%d@example.com","sent_ns":%d,"pad":"`,
		i, i, i, time.Now().UnixNano())
	if n := 198 - len(s); n > 0 {
		s += strings.Repeat("x", n)
	}
	return s + `"}`
}

// Counter counts finished tasks and writes the result file once the
// expected number ran, then exits the process (the peers' workers only
// stop on a signal otherwise).
type Counter struct {
	expect int64
	out    string
	done   int64
	first  int64
	once   sync.Once
}

// NewCounter expects n tasks and writes its result to out.
func NewCounter(n int, out string) *Counter {
	return &Counter{expect: int64(n), out: out}
}

// Task records one finished task; the last one writes the result and exits.
func (c *Counter) Task() {
	now := time.Now().UnixNano()
	atomic.CompareAndSwapInt64(&c.first, 0, now)
	if atomic.AddInt64(&c.done, 1) == c.expect {
		c.once.Do(func() {
			Write(c.out, "tasks=%d\nfirst_ns=%d\nlast_ns=%d\n", c.expect,
				atomic.LoadInt64(&c.first), now)
			// Give the ack of the last delivery a moment to leave.
			time.Sleep(200 * time.Millisecond)
			os.Exit(0)
		})
	}
}

// Write writes a result file (or stdout for "" or "-").
func Write(path, format string, args ...interface{}) {
	text := fmt.Sprintf(format, args...)
	if path == "" || path == "-" {
		fmt.Print(text)
		return
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "benchio:", err)
		os.Exit(1)
	}
}

// Send runs send(i) for i in [0, n) on g goroutines and writes the rate.
func Send(n, g int, out string, send func(i int) error) error {
	var next int64 = -1
	var failed atomic.Value
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < g; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := atomic.AddInt64(&next, 1)
				if i >= int64(n) || failed.Load() != nil {
					return
				}
				if err := send(int(i)); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		return err
	}
	secs := time.Since(t0).Seconds()
	Write(out, "sent=%d\nsecs=%.3f\nrate=%.0f\nstart_ns=%d\n", n, secs,
		float64(n)/secs, t0.UnixNano())
	return nil
}

// Options is the command line both Go peers take,
//
//	NAME send|work [-n N] [-g G] [-c C] [-o FILE]
//
// with the broker URL from BENCH_AMQP_URL and the prefetch every client
// of the benchmark uses from BENCH_PREFETCH (default 128).
type Options struct {
	Cmd      string // send or work
	N        int    // tasks
	G        int    // sending goroutines
	C        int    // worker concurrency
	Out      string // result file, "-" for stdout
	URL      string
	Prefetch int
}

// ParseArgs reads the options of the peer called `name`; `g` and `gHelp`
// are its default and help for -g. Bad input exits 2 with a usage line:
// these are benchmark programs, not a library.
func ParseArgs(name string, g int, gHelp string) Options {
	if len(os.Args) < 2 {
		fmt.Fprintf(os.Stderr, "usage: %s send|work [-n N] [-g G] [-c C] [-o FILE]\n", name)
		os.Exit(2)
	}
	o := Options{Cmd: os.Args[1], URL: os.Getenv("BENCH_AMQP_URL"), Prefetch: 128}
	fs := flag.NewFlagSet(o.Cmd, flag.ExitOnError)
	fs.IntVar(&o.N, "n", 10000, "tasks")
	fs.IntVar(&o.G, "g", g, gHelp)
	fs.IntVar(&o.C, "c", 8, "worker concurrency")
	fs.StringVar(&o.Out, "o", "-", "result file")
	_ = fs.Parse(os.Args[2:])
	if o.URL == "" {
		o.URL = "amqp://guest:guest@127.0.0.1:5672/"
	}
	if v := os.Getenv("BENCH_PREFETCH"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: BENCH_PREFETCH: %v\n", name, err)
			os.Exit(2)
		}
		o.Prefetch = p
	}
	return o
}
