package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/surendratiwari3/paota/config"
	"github.com/surendratiwari3/paota/logger"
	"github.com/surendratiwari3/paota/schema"
	"github.com/surendratiwari3/paota/workerpool"
)

type quietLogger struct{ logger.Logger }

func (quietLogger) Info(args ...interface{}) {}

// paotaPool builds a worker pool on the test's names. paota reads its
// settings once, into a process-wide provider.
func paotaPool() (workerpool.Pool, error) {
	logger.ApplicationLogger = quietLogger{logger.ApplicationLogger}
	cnf := config.Config{
		Broker:        "amqp",
		TaskQueueName: need("KILN_QUEUE"),
		AMQP: &config.AMQPConfig{
			Url:                need("KILN_BROKER_URL"),
			Exchange:           need("KILN_EXCHANGE"),
			ExchangeType:       need("KILN_EXCHANGE_TYPE"),
			BindingKey:         need("KILN_BINDING_KEY"),
			PrefetchCount:      4,
			ConnectionPoolSize: 2,
			DelayedQueue:       need("IOP_PAOTA_DELAYED_QUEUE"),
			// paota passes this to amqp091 as a time.Duration, so it is
			// nanoseconds; below 1 s the broker's interval applies.
			HeartBeatInterval: int(10 * time.Second),
		},
	}
	if err := config.GetConfigProvider().SetApplicationConfig(cnf); err != nil {
		return nil, err
	}
	return workerpool.NewWorkerPool(context.Background(), 2, "iop-paota")
}

func paotaSend() error {
	pool, err := paotaPool()
	if err != nil {
		return err
	}
	args := make([]schema.Arg, len(allTypes))
	for i, a := range allTypes {
		args[i] = schema.Arg{Name: a.name, Type: a.typ, Value: a.value}
	}
	sig, err := schema.NewSignature(taskAllTypes, args)
	if err != nil {
		return err
	}
	if _, err := pool.SendTaskWithContext(context.Background(), sig); err != nil {
		return err
	}
	record("SENT", taskAllTypes, sig.UUID)
	return nil
}

func paotaArgs(sig *schema.Signature) []arg {
	out := make([]arg, len(sig.Args))
	for i, a := range sig.Args {
		out[i] = arg{a.Name, a.Type, a.Value}
	}
	return out
}

func paotaRun(task string, sig *schema.Signature, check error) {
	recordRun(task, sig.UUID, sig.RetryCount, sig.RetryTimeout, sig.RetriesDone, sig.ETA, check)
}

func paotaWorker() error {
	pool, err := paotaPool()
	if err != nil {
		return err
	}
	retried := make(chan struct{}, 1)
	err = pool.RegisterTasks(map[string]interface{}{
		taskAllTypes: func(sig *schema.Signature) error {
			check := checkDecoded(paotaArgs(sig))
			paotaRun(taskAllTypes, sig, check)
			return check
		},
		// Fails, so paota retries it through its delayed queue.
		taskRetry: func(sig *schema.Signature) error {
			paotaRun(taskRetry, sig, nil)
			select {
			case retried <- struct{}{}:
			default:
			}
			return errors.New("failing on purpose, to be retried")
		},
		taskETA: func(sig *schema.Signature) error {
			paotaRun(taskETA, sig, nil)
			return nil
		},
	})
	if err != nil {
		return err
	}
	if quitAfterRetry() {
		go func() {
			<-retried
			waitDelayed()
			os.Exit(0)
		}()
	}
	// Start blocks until SIGINT; the test kills the process.
	return pool.Start()
}

// waitDelayed returns once paota's retry waits in its delayed queue, and a
// moment more for paota to ack the original delivery after the publish.
func waitDelayed() {
	conn, err := amqp.Dial(need("KILN_BROKER_URL"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "peer: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); {
		ch, err := conn.Channel()
		if err != nil {
			break
		}
		q, err := ch.QueueDeclarePassive(need("IOP_PAOTA_DELAYED_QUEUE"), true,
			false, false, false, nil)
		_ = ch.Close()
		if err == nil && q.Messages > 0 {
			time.Sleep(300 * time.Millisecond)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintln(os.Stderr, "peer: paota's retry never reached its delayed queue")
	os.Exit(1)
}

// paotaRawSend publishes what paota's releases after v1.0.0 publish for a
// signature with RawArgs: the raw JSON as the body and the metadata in
// headers (their broker's buildHeadersFromSignature). v1.0.0, the release
// the module proxy serves, predates that mode, so this sends it with the
// same AMQP client (amqp091-go) and the same Go header types: int counters
// (AMQP 'I'), int64 Unix seconds for created_at (AMQP 'l'), a bool.
func paotaRawSend() error {
	conn, err := amqp.Dial(need("KILN_BROKER_URL"))
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 1))
	uuid := "task_7d3c1f0e-2b4a-4c6d-8e9f-0a1b2c3d4e5f"
	createdAt, _ := strconv.ParseInt(need("IOP_RAW_CREATED_AT"), 10, 64)
	created := time.Unix(createdAt, 0)
	retries, _ := strconv.Atoi(need("IOP_RAW_RETRY_COUNT"))
	headers := amqp.Table{
		"uuid":                   uuid,
		"task_name":              need("IOP_RAW_TASK"),
		"retry_count":            retries,
		"retry_timeout":          0,
		"timeout":                30,
		"wait_time":              0,
		"retries_done":           1,
		"ignore_if_unregistered": false,
		"created_at":             created.Unix(),
	}
	err = ch.PublishWithContext(context.Background(), need("KILN_EXCHANGE"),
		need("KILN_BINDING_KEY"), false, false, amqp.Publishing{
			ContentType:  "application/json",
			Body:         []byte(need("IOP_RAW_BODY")),
			DeliveryMode: amqp.Persistent,
			Headers:      headers,
		})
	if err != nil {
		return err
	}
	if c := <-confirms; !c.Ack {
		return errors.New("the broker nacked the message")
	}
	record("SENT", need("IOP_RAW_TASK"), uuid)
	return nil
}
