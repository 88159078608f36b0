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
	"fmt"
	stdlog "log"
	"os"

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

func server(o benchio.Options) *machinery.Server {
	cnf := &config.Config{
		Broker:          o.URL,
		DefaultQueue:    "machinery_tasks",
		ResultsExpireIn: 3600,
		AMQP: &config.AMQPConfig{
			Exchange:     "machinery_exchange",
			ExchangeType: "direct",
			// machinery publishes to the queue named by the routing key on a
			// direct exchange, so the binding key is the queue's name.
			BindingKey:    "machinery_tasks",
			PrefetchCount: o.Prefetch,
		},
	}
	return machinery.NewServer(cnf, amqpbroker.New(cnf), nullbackend.New(), eagerlock.New())
}

func main() {
	o := benchio.ParseArgs("machinery", 16, "sending goroutines")
	log.Set(quiet{})
	log.SetWarning(stdlog.New(os.Stderr, "WARN ", stdlog.LstdFlags))
	log.SetError(stdlog.New(os.Stderr, "ERROR ", stdlog.LstdFlags))
	srv := server(o)

	switch o.Cmd {
	case "send":
		err := benchio.Send(o.N, o.G, o.Out, func(i int) error {
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
		counter := benchio.NewCounter(o.N, o.Out)
		if err := srv.RegisterTask("noop", func(arg string) error {
			counter.Task()
			return nil
		}); err != nil {
			fmt.Fprintln(os.Stderr, "machinery register:", err)
			os.Exit(1)
		}
		w := srv.NewWorker("bench", o.C)
		w.SetErrorHandler(func(err error) { fmt.Fprintln(os.Stderr, "machinery task:", err) })
		if err := w.Launch(); err != nil {
			fmt.Fprintln(os.Stderr, "machinery worker:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "machinery: unknown command", o.Cmd)
		os.Exit(2)
	}
}
