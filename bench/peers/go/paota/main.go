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
	"fmt"
	"os"

	"github.com/sirupsen/logrus"
	"github.com/surendratiwari3/paota/config"
	"github.com/surendratiwari3/paota/logger"
	"github.com/surendratiwari3/paota/schema"
	"github.com/surendratiwari3/paota/workerpool"

	"kiln/bench/peers/benchio"
)

func main() {
	o := benchio.ParseArgs("paota", 10, "sending goroutines (at most the pool size, 10)")

	// paota logs through logrus; warnings and errors only, as kiln's run.
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	logger.ApplicationLogger = log

	cnf := config.Config{
		Broker:        "amqp",
		TaskQueueName: "paota_tasks",
		AMQP: &config.AMQPConfig{
			Url:                o.URL,
			Exchange:           "paota_task_exchange",
			ExchangeType:       "direct",
			BindingKey:         "paota_task_binding_key",
			PrefetchCount:      o.Prefetch,
			ConnectionPoolSize: 10,
			DelayedQueue:       "paota_delay",
			HeartBeatInterval:  10,
		},
	}
	pool, err := workerpool.NewWorkerPoolWithConfig(context.Background(), uint(o.C), "bench", cnf)
	if err != nil || pool == nil {
		fmt.Fprintln(os.Stderr, "paota: worker pool:", err)
		os.Exit(1)
	}

	switch o.Cmd {
	case "send":
		err := benchio.Send(o.N, o.G, o.Out, func(i int) error {
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
		counter := benchio.NewCounter(o.N, o.Out)
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
		fmt.Fprintln(os.Stderr, "paota: unknown command", o.Cmd)
		os.Exit(2)
	}
}
