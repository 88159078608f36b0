// machinery: the benchmark's machinery v2 sender and worker.
//
//	machinery send -n N -g GOROUTINES [-o FILE]
//	machinery work -n N -c CONCURRENCY [-o FILE]
//
// The broker URL comes from BENCH_AMQP_URL. Settings follow machinery's
// README (direct exchange, durable queue, persistent messages, a confirm
// per publish, ack after the task); the prefetch is the one every client
// in the benchmark uses (BENCH_PREFETCH, default 128) and the result
// backend is null, as kiln runs without a store.
package main

import (
	"flag"
	"fmt"
	stdlog "log"
	"os"
	"strconv"

	"github.com/RichardKnop/machinery/v2"
	nullbackend "github.com/RichardKnop/machinery/v2/backends/null"
	amqpbroker "github.com/RichardKnop/machinery/v2/brokers/amqp"
	"github.com/RichardKnop/machinery/v2/config"
	eagerlock "github.com/RichardKnop/machinery/v2/locks/eager"
	"github.com/RichardKnop/machinery/v2/log"
	"github.com/RichardKnop/machinery/v2/tasks"

	"kiln/bench/peers/benchio"
)

// quiet drops machinery's per-task INFO and DEBUG lines, as kiln's
// benchmark runs at log level warn.
type quiet struct{}

func (quiet) Print(...interface{})              {}
func (quiet) Printf(string, ...interface{})     {}
func (quiet) Println(...interface{})            {}
func (quiet) Fatal(v ...interface{})            { stdlog.Fatal(v...) }
func (quiet) Fatalf(f string, v ...interface{}) { stdlog.Fatalf(f, v...) }
func (quiet) Fatalln(v ...interface{})          { stdlog.Fatalln(v...) }
func (quiet) Panic(v ...interface{})            { stdlog.Panic(v...) }
func (quiet) Panicf(f string, v ...interface{}) { stdlog.Panicf(f, v...) }
func (quiet) Panicln(v ...interface{})          { stdlog.Panicln(v...) }

func server() *machinery.Server {
	prefetch, err := strconv.Atoi(getenv("BENCH_PREFETCH", "128"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "machinery: BENCH_PREFETCH:", err)
		os.Exit(2)
	}
	cnf := &config.Config{
		Broker:          getenv("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
		DefaultQueue:    "machinery_tasks",
		ResultsExpireIn: 3600,
		AMQP: &config.AMQPConfig{
			Exchange:     "machinery_exchange",
			ExchangeType: "direct",
			// machinery publishes to the queue named by the routing key on a
			// direct exchange, so the binding key is the queue's name.
			BindingKey:    "machinery_tasks",
			PrefetchCount: prefetch,
		},
	}
	return machinery.NewServer(cnf, amqpbroker.New(cnf), nullbackend.New(), eagerlock.New())
}

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: machinery send|work [-n N] [-g G] [-c C] [-o FILE]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	n := fs.Int("n", 10000, "tasks")
	g := fs.Int("g", 16, "sending goroutines")
	c := fs.Int("c", 8, "worker concurrency")
	out := fs.String("o", "-", "result file")
	_ = fs.Parse(os.Args[2:])
	log.Set(quiet{})
	log.SetWarning(stdlog.New(os.Stderr, "WARN ", stdlog.LstdFlags))
	log.SetError(stdlog.New(os.Stderr, "ERROR ", stdlog.LstdFlags))
	srv := server()

	switch os.Args[1] {
	case "send":
		err := benchio.Send(*n, *g, *out, func(i int) error {
			sig := &tasks.Signature{
				Name: "noop",
				Args: []tasks.Arg{{Type: "string", Value: benchio.Payload(i)}},
			}
			_, err := srv.SendTask(sig)
			return err
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "machinery send:", err)
			os.Exit(1)
		}
	case "work":
		counter := benchio.NewCounter(*n, *out)
		if err := srv.RegisterTask("noop", func(arg string) error {
			counter.Task()
			return nil
		}); err != nil {
			fmt.Fprintln(os.Stderr, "machinery register:", err)
			os.Exit(1)
		}
		w := srv.NewWorker("bench", *c)
		w.SetErrorHandler(func(err error) { fmt.Fprintln(os.Stderr, "machinery task:", err) })
		if err := w.Launch(); err != nil {
			fmt.Fprintln(os.Stderr, "machinery worker:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "machinery: unknown command", os.Args[1])
		os.Exit(2)
	}
}
