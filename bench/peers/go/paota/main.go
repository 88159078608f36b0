// paota: the benchmark's paota sender and worker.
//
//	paota send -n N -g GOROUTINES [-o FILE]
//	paota work -n N -c CONCURRENCY [-o FILE]
//
// The broker URL comes from BENCH_AMQP_URL. Settings follow paota's
// examples (direct exchange, durable queue, persistent messages published
// with a confirm, ack after the task, a connection pool of 10); the prefetch
// is the one every client in the benchmark uses (BENCH_PREFETCH, default
// 128) and there is no store, as kiln runs without one.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/sirupsen/logrus"
	"github.com/surendratiwari3/paota/config"
	"github.com/surendratiwari3/paota/logger"
	"github.com/surendratiwari3/paota/schema"
	"github.com/surendratiwari3/paota/workerpool"

	"kiln/bench/peers/benchio"
)

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: paota send|work [-n N] [-g G] [-c C] [-o FILE]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	n := fs.Int("n", 10000, "tasks")
	g := fs.Int("g", 10, "sending goroutines (at most the pool size, 10)")
	c := fs.Uint("c", 8, "worker concurrency")
	out := fs.String("o", "-", "result file")
	_ = fs.Parse(os.Args[2:])
	prefetch, err := strconv.Atoi(getenv("BENCH_PREFETCH", "128"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "paota: BENCH_PREFETCH:", err)
		os.Exit(2)
	}

	// paota logs through logrus; warnings and errors only, as kiln's run.
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	logger.ApplicationLogger = log

	cnf := config.Config{
		Broker:        "amqp",
		TaskQueueName: "paota_tasks",
		AMQP: &config.AMQPConfig{
			Url:                getenv("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
			Exchange:           "paota_task_exchange",
			ExchangeType:       "direct",
			BindingKey:         "paota_task_binding_key",
			PrefetchCount:      prefetch,
			ConnectionPoolSize: 10,
			DelayedQueue:       "paota_delay",
			HeartBeatInterval:  10,
		},
	}
	pool, err := workerpool.NewWorkerPoolWithConfig(context.Background(), *c, "bench", cnf)
	if err != nil || pool == nil {
		fmt.Fprintln(os.Stderr, "paota: worker pool:", err)
		os.Exit(1)
	}

	switch os.Args[1] {
	case "send":
		err := benchio.Send(*n, *g, *out, func(i int) error {
			sig := &schema.Signature{
				Name: "noop",
				Args: []schema.Arg{{Type: "string", Value: benchio.Payload(i)}},
			}
			_, err := pool.SendTaskWithContext(context.Background(), sig)
			return err
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "paota send:", err)
			os.Exit(1)
		}
	case "work":
		counter := benchio.NewCounter(*n, *out)
		if err := pool.RegisterTasks(map[string]interface{}{
			"noop": func(*schema.Signature) error {
				counter.Task()
				return nil
			},
		}); err != nil {
			fmt.Fprintln(os.Stderr, "paota register:", err)
			os.Exit(1)
		}
		if err := pool.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "paota worker:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "paota: unknown command", os.Args[1])
		os.Exit(2)
	}
}
