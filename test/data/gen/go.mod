module kiln/testdata/gen

go 1.21
