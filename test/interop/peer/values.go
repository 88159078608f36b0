package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
)

// The arguments of iop.all_types: one of each of machinery's 29 types, at
// the edges of their ranges. test/interop/iop.h holds the same table for
// the kiln programs; the two must stay equal.
var allTypes = []struct {
	name, typ string
	value     interface{}
}{
	{"b", "bool", true},
	{"i", "int", int(math.MinInt64)},
	{"i8", "int8", int8(-128)},
	{"i16", "int16", int16(32767)},
	{"i32", "int32", int32(math.MinInt32)},
	{"i64", "int64", int64(math.MaxInt64)},
	{"u", "uint", uint(math.MaxUint64)},
	{"u8", "uint8", uint8(255)},
	{"u16", "uint16", uint16(65535)},
	{"u32", "uint32", uint32(math.MaxUint32)},
	{"u64", "uint64", uint64(12345678901234567890)},
	{"f32", "float32", float32(0.1)},
	{"f64", "float64", float64(0.1)},
	{"s", "string", "h\u00e9llo <b>&</b> \"q\" \\ \n\t\u2028 \U0001F600"},
	{"bs", "[]bool", []bool{true, false, true}},
	{"is", "[]int", []int{-1, 0, 1}},
	{"i8s", "[]int8", []int8{-128, 127}},
	{"i16s", "[]int16", []int16{-32768, 32767}},
	{"i32s", "[]int32", []int32{math.MinInt32, math.MaxInt32}},
	{"i64s", "[]int64", []int64{math.MinInt64, math.MaxInt64}},
	{"us", "[]uint", []uint{0, math.MaxUint64}},
	{"u8s", "[]uint8", []uint8{0, 1, 254, 255}},
	{"u16s", "[]uint16", []uint16{0, 65535}},
	{"u32s", "[]uint32", []uint32{0, math.MaxUint32}},
	{"u64s", "[]uint64", []uint64{0, math.MaxUint64}},
	{"f32s", "[]float32", []float32{math.MaxFloat32, math.SmallestNonzeroFloat32, -0.5}},
	{"f64s", "[]float64", []float64{1e21, math.SmallestNonzeroFloat64, math.MaxFloat64, 1e-7}},
	{"ss", "[]string", []string{"", "a", "<&>"}},
	{"by", "[]byte", []byte("kiln\x00\xff")},
}

// checkTyped compares typed values (as machinery hands them to a task
// function) with the table, exactly.
func checkTyped(got []interface{}) error {
	if len(got) != len(allTypes) {
		return fmt.Errorf("%d arguments, want %d", len(got), len(allTypes))
	}
	for i, want := range allTypes {
		if !reflect.DeepEqual(got[i], want.value) {
			return fmt.Errorf("Args[%d] (%s): got %T %#v, want %T %#v",
				i, want.typ, got[i], got[i], want.value, want.value)
		}
	}
	return nil
}

// arg is the shape of machinery's tasks.Arg and paota's schema.Arg.
type arg struct {
	Name, Type string
	Value      interface{}
}

// checkDecoded compares arguments as encoding/json decoded them with
// UseNumber (as paota hands them to a task) with the table: each value is
// read back into its Go type without rounding, then compared.
func checkDecoded(args []arg) error {
	if len(args) != len(allTypes) {
		return fmt.Errorf("%d arguments, want %d", len(args), len(allTypes))
	}
	for i, want := range allTypes {
		a := args[i]
		if a.Name != want.name || a.Type != want.typ {
			return fmt.Errorf("Args[%d]: name %q type %q, want %q %q",
				i, a.Name, a.Type, want.name, want.typ)
		}
		got, err := fromJSON(a.Type, a.Value)
		if err != nil {
			return fmt.Errorf("Args[%d] (%s): %v", i, a.Type, err)
		}
		if !reflect.DeepEqual(got, want.value) {
			return fmt.Errorf("Args[%d] (%s): got %#v, want %#v", i, a.Type, got, want.value)
		}
	}
	return nil
}

// fromJSON converts one decoded JSON value to the Go type named by typ.
func fromJSON(typ string, v interface{}) (interface{}, error) {
	if strings.HasPrefix(typ, "[]") {
		return sliceFromJSON(typ, v)
	}
	switch typ {
	case "bool":
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("%T is not a bool", v)
		}
		return b, nil
	case "string":
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%T is not a string", v)
		}
		return s, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return nil, fmt.Errorf("%T is not a number", v)
	}
	return numberAs(typ, string(n))
}

// numberAs parses the decimal text s exactly into the Go type typ.
func numberAs(typ, s string) (interface{}, error) {
	switch typ {
	case "int", "int64":
		x, err := strconv.ParseInt(s, 10, 64)
		if typ == "int" {
			return int(x), err
		}
		return x, err
	case "int8":
		x, err := strconv.ParseInt(s, 10, 8)
		return int8(x), err
	case "int16":
		x, err := strconv.ParseInt(s, 10, 16)
		return int16(x), err
	case "int32":
		x, err := strconv.ParseInt(s, 10, 32)
		return int32(x), err
	case "uint", "uint64":
		x, err := strconv.ParseUint(s, 10, 64)
		if typ == "uint" {
			return uint(x), err
		}
		return x, err
	case "uint8":
		x, err := strconv.ParseUint(s, 10, 8)
		return uint8(x), err
	case "uint16":
		x, err := strconv.ParseUint(s, 10, 16)
		return uint16(x), err
	case "uint32":
		x, err := strconv.ParseUint(s, 10, 32)
		return uint32(x), err
	case "float32":
		x, err := strconv.ParseFloat(s, 32)
		return float32(x), err
	case "float64":
		return strconv.ParseFloat(s, 64)
	}
	return nil, fmt.Errorf("unknown type %q", typ)
}

func sliceFromJSON(typ string, v interface{}) (interface{}, error) {
	elem := strings.TrimPrefix(typ, "[]")
	if elem == "byte" || elem == "uint8" {
		// encoding/json writes []byte (and so []uint8) as base64.
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%T is not a base64 string", v)
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if elem == "uint8" {
			return []uint8(b), err
		}
		return b, err
	}
	items, ok := v.([]interface{})
	if !ok {
		return nil, fmt.Errorf("%T is not an array", v)
	}
	want := reflect.TypeOf(findType(typ))
	out := reflect.MakeSlice(want, len(items), len(items))
	for i, item := range items {
		x, err := fromJSON(elem, item)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %v", i, err)
		}
		out.Index(i).Set(reflect.ValueOf(x))
	}
	return out.Interface(), nil
}

// findType returns the table's value of type typ (for its reflect.Type).
func findType(typ string) interface{} {
	for _, a := range allTypes {
		if a.typ == typ {
			return a.value
		}
	}
	return nil
}

// The results kiln's iop.all_types stores and a machinery client reads
// back. They are the types machinery's MongoDB backend itself round-trips:
// it reads integers back only as int64 (so no uint or int32 results) and
// cannot read []byte at all (test/interop/iop.h, IOP_RESULT_*).
var kilnResults = []interface{}{int64(math.MinInt64), float64(0.1), "h\u00e9llo", true}

// The results the Go workers return for iop.all_types, read by kiln.
func goResults() (int64, uint64, float64, string, bool) {
	return math.MaxInt64, 42, 0.1, "h\u00e9llo", true
}
