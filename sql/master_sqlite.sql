-- The master table for the embedded SQLite backend: the same columns as sql/master_mysql.sql.
CREATE TABLE IF NOT EXISTS "v11_1" (
  "obsid" INTEGER NOT NULL PRIMARY KEY,
  "OD" INTEGER DEFAULT NULL,
  "pipelined" INTEGER DEFAULT 0,
  "mode" CHAR(60) DEFAULT NULL,
  "aotlabel" CHAR(100) DEFAULT NULL,
  "obstime" INTEGER DEFAULT NULL,
  "max_level" CHAR(25) DEFAULT NULL,
  "pipetime" INTEGER DEFAULT NULL,
  "savetime" INTEGER DEFAULT NULL,
  "band" CHAR(2) DEFAULT NULL,
  "lomin" REAL DEFAULT NULL,
  "lomax" REAL DEFAULT NULL,
  "target" CHAR(50) DEFAULT NULL
);
